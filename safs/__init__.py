"""safs: activation-function and hyperparameter search for sparse neural networks.

Importing ``safs`` is cheap: torch, Ray and SMAC load only when a command needs them.
"""

__version__ = "0.1.0"


def load_results(*paths):
    """All results rows under ``paths`` (run directories or results roots) as a DataFrame."""
    from safs.report.rows import load_results as _load

    return _load(*paths)
