"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda t: t.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda t: t.write_text(text))


def copy_file(src: Path, dst: Path) -> None:
    _atomic(dst, lambda t: shutil.copyfile(src, t))


def torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic(path, lambda t: torch.save(obj, t))


def write_parquet(path: Path, frame) -> None:
    _atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
