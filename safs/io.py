"""Atomic file writes (a reader sees the old file or the new one, never half of one), locks,
checksums, and the few helpers that make and compare plain JSON values."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


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


def plain(value: Any) -> Any:
    """``value`` as plain Python: a numpy scalar (ConfigSpace hands out ``np.str_``,
    ``np.float64``) as the Python scalar, a mapping (a dict, a ConfigSpace ``Configuration``)
    as a dict of plain values; anything else unchanged."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") else value


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A copy of ``base`` with ``override`` merged in: nested mappings merge, anything else in
    ``override`` replaces (a copy of) what ``base`` has."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) \
            else copy.deepcopy(v)
    return out


def digest(payload: Any, *, length: int | None = None, separators: tuple[str, str] = (",", ":")) -> str:
    """The SHA-256 (hex; its first ``length`` digits) of ``payload``'s canonical JSON: sorted
    keys, ``separators`` as in ``json.dumps``, anything else as ``str``."""
    blob = json.dumps(payload, sort_keys=True, separators=separators, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


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


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def exclusive(path: Path, *, wait: bool = False, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block. If another
    process has it: raise :class:`Busy` naming the holder's PID, or with ``wait``, call
    ``on_wait`` and block until it is free. The kernel drops a lock when its holder dies,
    even by SIGKILL, so a crashed run never blocks the next one."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                f.seek(0)
                raise Busy(f"in use by another process (pid {f.read().strip() or '?'})") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
