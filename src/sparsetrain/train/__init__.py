"""Training: the loop, callbacks, checkpoints and evaluation."""
