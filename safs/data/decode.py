"""One image file to a uint8 tensor: the decoder both the in-memory cache
(``safs.data.imagefolder``) and the streamed batches (``safs.data.streaming``) use, so the
two read the very same pixels."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .base import DataError


def decode_file(path: Path, transform: dict[str, Any]):
    """One image as uint8 (3, H, W) after ``transform``; a DataError naming the file if it
    cannot be read or decoded."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise DataError(f"data.data_dir: cannot decode image '{path}': {reason}") from None
    if transform["op"] == "resize":
        h, w = transform["size"]
        if tuple(img.shape[1:]) != (h, w):
            img = F.resize(img, [h, w], antialias=True)
    else:
        img = F.center_crop(F.resize(img, transform["resize"], antialias=True), transform["crop"])
    return img.to(torch.uint8).contiguous()


def quiet_decoder() -> None:
    """Silence torchvision 0.29's notice that TorchCodec supersedes its decoders (once per image)."""
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                            DeprecationWarning)
