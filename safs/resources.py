"""Files that ship with safs: the built-in search spaces and the example pipelines.

An installed wheel holds them as package data (``safs/_spaces``, ``safs/_experiments``; see
``setup.py``); a source checkout (``pip install -e .``, or the repository on ``PYTHONPATH``)
reads the repository's own ``search_spaces/`` and ``experiments/`` beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# what -> (its directory inside an installed package, its directory in the repository)
_DIRS = {"spaces": ("_spaces", "search_spaces"), "experiments": ("_experiments", "experiments")}


def data_dir(what: str) -> Path:
    """The directory of the built-in ``spaces`` or ``experiments``."""
    packaged, top = _DIRS[what]
    pkg = Path(str(resources.files("safs")))
    return pkg / packaged if (pkg / packaged).is_dir() else pkg.parent / top
