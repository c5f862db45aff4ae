"""Pieces of the training script that are not the algorithm itself: arguments, which parameters train
for each method, checkpoints, data-parallel gradient sync and the memory report."""
