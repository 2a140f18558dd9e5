"""Reading our results beside the paper's: its numbers, intervals, verdicts and the report."""
