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
* **AutoAugment** (Cubuk et al. 2019) and **RandAugment** (Cubuk et al. 2020): torchvision's
  ``transforms.v2`` policies on the batch on its device. Their ops expect pixels in [0, 1], so
  the normalised batch is mapped back (``x·std + mean``: the pixels times the dataset's scale),
  clamped, transformed and normalised again. A policy call draws one sub-policy for the tensor
  it gets, so each group of ``samples_per_draw`` samples (default 1: each sample, as in the
  papers) is one call. The draws come from torch's CPU generator, reseeded every epoch like
  mixup's. Applied first, before random erasing and mixing (torchvision's order: the policy on
  the image, erasing on the normalised tensor).
* **knowledge distillation** (Hinton et al. 2015; :class:`Distiller`): the loss is
  ``(1 − α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, the teacher an
  earlier stage's model in eval mode, without gradients, on the batch the student sees (after
  the recipes above). ``T²`` keeps the soft term's gradient scale independent of ``T``.
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


class ImagePolicy:
    """AutoAugment or RandAugment on a normalised (B, C, H, W) batch (see the module docstring).

    ``mean``/``std``: the dataset's normalisation (``None``: none), as tensors broadcasting
    against the batch; ``transform``: a torchvision v2 policy acting on float images in [0, 1]."""

    def __init__(self, transform, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 samples_per_draw: int = 1):
        self.transform, self.mean, self.std = transform, mean, std
        self.samples_per_draw = int(samples_per_draw)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x if self.std is None else x * self.std
        pixels = (pixels if self.mean is None else pixels + self.mean).clamp_(0, 1)
        k = self.samples_per_draw
        out = torch.cat([self.transform(pixels[i:i + k]) for i in range(0, pixels.shape[0], k)])
        if self.mean is not None:
            out = out.sub_(self.mean)
        return out if self.std is None else out.div_(self.std)


def make_policy(st: dict, dataset=None) -> ImagePolicy | None:
    """The stage's image policy (``autoaugment`` or ``randaugment``) for ``dataset``'s
    normalisation, or ``None``."""
    from torchvision.transforms import v2

    auto, rand = st.get("autoaugment"), st.get("randaugment")
    if auto:
        transform = v2.AutoAugment(v2.AutoAugmentPolicy(auto["policy"]))
        per = auto.get("samples_per_draw", 1)
    elif rand:
        transform = v2.RandAugment(num_ops=rand["num_ops"], magnitude=rand["magnitude"])
        per = rand.get("samples_per_draw", 1)
    else:
        return None
    mean, std = (_as_batch(getattr(dataset, k, None)) for k in ("mean", "std"))
    return ImagePolicy(transform, mean, std, per)


def _as_batch(t: torch.Tensor | None) -> torch.Tensor | None:
    """A dataset's per-channel (C,) or per-pixel (1, C, H, W) statistic, broadcasting over a batch."""
    if t is None:
        return None
    t = t.detach().float()
    return t.view(1, -1, 1, 1) if t.dim() == 1 else t


class BatchRecipe:
    """Image policy / random erasing / mixup / cutmix on a normalised training batch."""

    def __init__(self, mixup: float | None = None, cutmix: float | None = None, erasing: float = 0.0,
                 policy: ImagePolicy | None = None):
        self.mixup, self.cutmix, self.erasing = mixup, cutmix, float(erasing)
        self.policy = policy

    def __bool__(self) -> bool:
        return bool(self.mixup or self.cutmix or self.erasing or self.policy is not None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """The batch to train on and, when it is mixed, ``(y', λ)`` for :meth:`loss`."""
        if self.policy is not None:
            x = self.policy(x)
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


def make_recipe(st: dict, dataset=None) -> BatchRecipe | None:
    """The stage's batch recipes (``None``: none); ``dataset`` gives an image policy its
    normalisation."""
    recipe = BatchRecipe(mixup=(st.get("mixup") or {}).get("alpha"), cutmix=(st.get("cutmix") or {}).get("alpha"),
                         erasing=st.get("random_erasing") or 0.0, policy=make_policy(st, dataset))
    return recipe if recipe else None


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, alpha: float,
                 temperature: float) -> torch.Tensor:
    """``(1 − alpha)·hard + alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, the KL
    averaged over the batch; ``hard`` is the stage's own loss (cross-entropy, mixed or smoothed)."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * t * t * kl


class Distiller:
    """Distillation from ``teacher`` (frozen, in eval mode): :meth:`loss` adds its soft term."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def loss(self, out: torch.Tensor, x: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = self.teacher(x)
        return distill_loss(out, teacher_out, hard, self.alpha, self.temperature)


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
