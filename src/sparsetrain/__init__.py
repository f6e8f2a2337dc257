"""sparsetrain: sparse neural network training in PyTorch."""
__version__ = "0.1.0"
