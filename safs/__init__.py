"""safs: activation-function and hyperparameter search for sparse neural networks.

Importing ``safs`` is cheap: torch, Ray and SMAC load only when a command needs them.

What a reader of the results needs, for re-deriving any row from the saved files:

* ``safs.load_results(*paths)``: every results row, a pandas DataFrame;
* ``safs.load_model(path)``: the network of a stage directory or ``model.pt``;
* ``safs.load_dataset(name, ...)``: the train/val/test splits the stages use.
"""

__version__ = "0.1.0"


def load_results(*paths):
    """All results rows under ``paths`` (run directories or results roots) as a DataFrame."""
    from safs.report.rows import load_results as _load

    return _load(*paths)


def load_model(path):
    """The network a stage saved: ``path`` is a stage directory or a ``model.pt``. Returns an
    ``nn.Module`` on the CPU in eval mode: plain conv/linear layers with the zeros in
    ``weight`` (and a ``weight_mask`` buffer per sparse layer), the activation genome and
    the slots' α/β applied, so its test accuracy and its zeros are the row's."""
    from pathlib import Path

    from safs.model_file import load_model as _load

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    model, _ = _load(path, "cpu")
    return model.eval()


def load_dataset(name, data_dir=None, *, seed=0, val_fraction=None, test_fraction=None, image_size=None):
    """The dataset ``name`` with the splits a pipeline with ``data: {name, data_dir,
    split_seed: seed, val_fraction, test_fraction, image_size}`` trains, selects and tests on
    (on the CPU). ``split(name)`` gives a split's raw ``x`` and ``y``; model input is
    ``(x.float() * scale - mean) / std`` (``safs.data.normalise``)."""
    from safs.data import load_dataset as _load

    return _load(name, data_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                 image_size=image_size)
