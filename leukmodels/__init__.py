"""leukemia-tune's Ray-free core: the C-NMC data layer, the model families, the training loop and the metrics.

Nothing under this package imports Ray: it all runs in a plain Python process, a DDP worker or a notebook.
"""
__version__ = "0.1.0"
