"""Training TopK SAEs on a model's activations: the activation stream, the optimiser step, the
training loop with resume, and the runs it writes."""
