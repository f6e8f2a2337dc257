"""Sparsity core: masks, layer-wise distributions, schedules, the engine and the methods."""
