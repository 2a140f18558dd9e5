"""The data side of the pipeline: corpora, Faithful text (sampling and generation), dataset
statistics and the probing tasks."""
