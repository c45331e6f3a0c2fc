"""PyTorch definitions of the served models, parameter names compatible with the usual checkpoints."""
