"""A search's answer on unseen patients: the held-out test set recomputed from the split, checkpoints scored (plain,
TTA, retrained, ensembles, patient calls), prediction for new cells and export. Imports `search.tuning` (the split)
and `search.board`."""
