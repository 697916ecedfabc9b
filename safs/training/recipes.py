"""Training recipes of the method papers, applied to the batch on its device.

* **mixup** (Zhang et al. 2018): ``x ← λ·x + (1 − λ)·x'``, λ ~ Beta(α, α).
* **cutmix** (Yun et al. 2019): a box of ``x'`` (area ``1 − λ``) pasted into ``x``; λ is then
  the area actually kept.
* With both, each batch draws one of the two with probability 1/2 (timm's convention).
  ``x'`` is the batch in reverse order (the batch is already a random sample), and the loss is
  the soft-target cross-entropy ``λ·CE(out, y) + (1 − λ)·CE(out, y')`` (label smoothing on
  both). λ and the box are drawn on the CPU from torch's generator, which the trial reseeds
  every epoch: no device synchronisation, and a resumed epoch draws the same.
* **random erasing** (Zhong et al. 2020): each sample, with probability ``p``, gets one
  rectangle (area 2 %–33 % of the image, aspect ratio 0.3–3.3, log-uniform) set to 0 (the
  normalised mean, as torchvision's ``RandomErasing``); drawn on the device, vectorised.
* **EMA of weights** (:class:`WeightEMA`): an exponential moving average of every floating
  tensor of the state (parameters, BN statistics), updated after each optimizer step with
  one fused ``lerp``; a masked layer's average is multiplied by its current mask, so pruned
  weights stay exactly zero in the averaged network. Evaluation and the kept model use it.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchRecipe:
    """Mixup / cutmix / random erasing on a normalised training batch."""

    def __init__(self, mixup: float | None = None, cutmix: float | None = None, erasing: float = 0.0):
        self.mixup, self.cutmix, self.erasing = mixup, cutmix, float(erasing)

    def __bool__(self) -> bool:
        return bool(self.mixup or self.cutmix or self.erasing)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """The batch to train on and, when it is mixed, ``(y', λ)`` for :meth:`loss`."""
        if self.erasing:
            x = random_erase(x, self.erasing)
        mix = None
        if self.mixup or self.cutmix:
            use_cutmix = bool(self.cutmix) and (not self.mixup or torch.rand(()).item() < 0.5)
            alpha = self.cutmix if use_cutmix else self.mixup
            lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
            x, lam = (_cutmix(x, lam) if use_cutmix else (torch.lerp(x.flip(0), x, lam), lam))
            mix = (y.flip(0), lam)
        return x, mix

    @staticmethod
    def loss(out: torch.Tensor, y: torch.Tensor, mix: tuple | None, label_smoothing: float) -> torch.Tensor:
        if mix is None:
            return F.cross_entropy(out, y, label_smoothing=label_smoothing)
        y2, lam = mix
        return (lam * F.cross_entropy(out, y, label_smoothing=label_smoothing)
                + (1 - lam) * F.cross_entropy(out, y2, label_smoothing=label_smoothing))


def _cutmix(x: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1].flip(0)
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def random_erase(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Each sample of the (B, C, H, W) batch ``x``, with probability ``p``: one rectangle set to 0."""
    b, _, h, w = x.shape
    u = torch.rand(b, 5, device=x.device)
    s = h * w * (area[0] + u[:, 1] * (area[1] - area[0]))
    r = torch.exp(math.log(ratio[0]) + u[:, 2] * (math.log(ratio[1]) - math.log(ratio[0])))
    eh = (s * r).sqrt().clamp(max=h)
    ew = (s / r).sqrt().clamp(max=w)
    top = u[:, 3] * (h - eh)
    left = u[:, 4] * (w - ew)
    rows = torch.arange(h, device=x.device, dtype=u.dtype)
    cols = torch.arange(w, device=x.device, dtype=u.dtype)
    inside_r = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    inside_c = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    erase = (inside_r[:, :, None] & inside_c[:, None, :]) & (u[:, 0] < p)[:, None, None]
    return x.masked_fill(erase[:, None], 0)


def make_recipe(st: dict) -> BatchRecipe | None:
    recipe = BatchRecipe(mixup=(st.get("mixup") or {}).get("alpha"), cutmix=(st.get("cutmix") or {}).get("alpha"),
                         erasing=st.get("random_erasing") or 0.0)
    return recipe if recipe else None


class WeightEMA:
    """An exponential moving average of a model's floating state (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float):
        from safs.sparsity.masks import MASK, masked_layers

        self.decay = float(decay)
        state = model.state_dict()
        self.names = [k for k, v in state.items() if v.is_floating_point()]
        self.live = [state[k] for k in self.names]  # share storage with the model
        self.shadow = [t.detach().clone() for t in self.live]
        index = {k: i for i, k in enumerate(self.names)}
        self._masks = [(index[f"{n}.weight"], getattr(m, MASK)) for n, m in masked_layers(model).items()
                       if f"{n}.weight" in index]
        self._mask_shadow()

    @torch.no_grad()
    def _mask_shadow(self) -> None:
        for i, mask in self._masks:
            self.shadow[i].mul_(mask)

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, self.live, 1 - self.decay)
        self._mask_shadow()

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """The model holds the averaged values inside the block, its own ones again after."""
        stash = [t.clone() for t in self.live]
        torch._foreach_copy_(self.live, self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_(self.live, stash)

    def state_dict(self) -> dict:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, t in zip(self.names, self.shadow):
                t.copy_(state[k])
