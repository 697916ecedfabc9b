"""The sparse-method plugin interface.

A method is one object per trial. The training loop calls its hooks; nothing outside
``safs/sparsity`` knows which method runs. Sparsity and MACs are measured by
``safs.training.measure`` on the finalized model, never by the method itself.

Hook order in a training stage::

    attach() [load_state_dict() on resume] on_train_start()
    per epoch: on_epoch_start() ... on_epoch_end(); finalize() after the last
    per step:  forward -> loss -> backward -> before_step() -> optimizer.step() -> after_step()

A schedule that changes masks or thresholds "before the next forward" does so in
``after_step`` (GMP, ST-3).

Each method declares its ``protocol`` (the registry in ``safs.sparsity`` holds the same
value, so a pipeline is checked without importing torch): ``one_shot`` methods prune in a
prune stage and keep the masks fixed afterwards; ``during_training`` methods sparsify in a
train stage with ``sparse: true``, from the dense model, and fine-tune a model that arrives
already sparse with its masks fixed; ``architecture`` methods transform the network, and
record the transform for ``model.pt`` (``architecture(model)``) so that a loader can replay it
on a freshly built model (``rebuild(model, record)``); ``safs.sparsity.architecture``/``rebuild``
ask them by name, so the model file knows no method.

Options shared by the mask-based methods (each method lists the ones it accepts):

* ``exclude: [glob, ...]``: layers (names from ``safs.models.prunable_layers``, matched with
  ``fnmatch``) the method leaves dense: no ``weight_mask``, so they are not counted as
  prunable either. A pattern that matches no layer is an error (a typo would silently prune).
* ``layer_targets: {layer: sparsity}``: per-layer targets instead of the uniform ``target``
  for the layers named (the building block of a sparsity-budget transfer).
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from safs.models import prunable_layers
from safs.sparsity.masks import MaskKeeper

Control = Literal["exact", "indirect", "fixed"]
Protocol = Literal["one_shot", "during_training", "architecture"]


def pruned_count(sparsity: float, n: int) -> int:
    """How many of ``n`` weights a sparsity prunes: ``round(sparsity · n)``.

    The one rule of the package. It is what ``torch.nn.utils.prune`` does (so LWM's masks are
    the original SAFS code's), and rounding, unlike a floor, is not fooled by float noise in
    the product (0.7 · 90 = 62.99999…: a floor would prune 62).
    """
    return round(sparsity * n)


def exclude_option(value: Any) -> tuple[str, ...]:
    """The ``exclude`` option: a list of glob patterns (``None``: nothing excluded)."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) \
            or not all(isinstance(p, str) for p in value):
        raise ValueError(f"sparsity.options.exclude: {value!r} must be a list of layer-name glob patterns")
    return tuple(value)


def layer_targets_option(value: Any) -> Mapping[str, float]:
    """The ``layer_targets`` option: ``{layer name: sparsity in [0, 1)}`` (``None``: none)."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ValueError(f"sparsity.options.layer_targets: {value!r} must be a mapping {{layer name: sparsity}}")
    out = {}
    for name, s in value.items():
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise ValueError(f"sparsity.options.layer_targets.{name}: {s!r} must be a number in [0, 1)")
        out[str(name)] = float(s)
    return MappingProxyType(out)


def _some(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class SparseMethod:
    """Base class with no-op hooks; a method overrides what it needs."""

    name: ClassVar[str]
    control: ClassVar[Control]  # how the achieved sparsity relates to the target
    protocol: ClassVar[Protocol]  # which stages may run it (see the module docstring)
    changes_architecture: ClassVar[bool] = False
    # True when finalize() leaves the model and the method as they were (it returns a copy,
    # or the model itself when there is nothing to export), so a trainer may call it on the
    # live model every epoch without copying first (safs.stages.train.finalized).
    finalize_keeps_state: ClassVar[bool] = True
    # Defaults for methods that do not take these options: nothing excluded, one uniform target.
    exclude: tuple[str, ...] = ()
    layer_targets: Mapping[str, float] = MappingProxyType({})

    @classmethod
    def architecture(cls, model: nn.Module) -> dict | None:
        """The transform this method applied to ``model``'s architecture, as ``model.pt``
        records it: plain data (loadable with ``weights_only=True``) whose ``"transform"`` is
        the method's registry name; ``None`` when it applied none (every method but an
        ``architecture`` one)."""
        return None

    @classmethod
    def rebuild(cls, model: nn.Module, record: dict) -> None:
        """Replay the transform ``record`` (from :meth:`architecture`) on a freshly built model."""
        raise ValueError(f"method '{cls.name}' transforms no architecture")

    def __init__(self, target: float, **unknown: Any):
        """A subclass takes its options as keyword parameters and passes the rest here, where
        any left over is refused, naming the options the subclass's signature accepts."""
        if unknown:
            accepted = self.accepted_options()
            raise ValueError(f"sparsity.options: unknown option(s) {', '.join(sorted(unknown))} for method "
                             f"'{self.name}'" + (f"; accepted: {', '.join(accepted)}" if accepted else ""))
        self.target = target
        self._keeper: MaskKeeper | None = None

    @classmethod
    def accepted_options(cls) -> list[str]:
        """The option names of this method: its constructor's parameters after ``target``."""
        import inspect

        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.name not in ("self", "target")
                      and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))

    # --- setup ------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this method may touch: every conv/linear layer but the excluded ones."""
        return self._without_excluded(prunable_layers(model), model)

    def _without_excluded(self, layers: dict[str, nn.Module], model: nn.Module) -> dict[str, nn.Module]:
        """``layers`` less the excluded ones; patterns are checked against every conv/linear layer
        of ``model`` (a method may touch fewer: excluding a layer it skips anyway is no error)."""
        if not self.exclude:
            return layers
        names = list(prunable_layers(model))
        unmatched = [p for p in self.exclude if not any(fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise ValueError(f"sparsity.options.exclude: pattern(s) {', '.join(unmatched)} match no conv/linear "
                             f"layer of the model (its layers: {_some(names)})")
        return {n: m for n, m in layers.items() if not any(fnmatchcase(n, p) for p in self.exclude)}

    def layer_rates(self, layers: dict[str, nn.Module], uniform: float) -> dict[str, float]:
        """Each layer's target sparsity: its ``layer_targets`` entry, else ``uniform``.

        A name that is not one of ``layers`` (a typo, another model's layer, or an excluded
        layer) is an error: a budget that does not fit the model must not be half applied."""
        unknown = sorted(set(self.layer_targets) - set(layers))
        if unknown:
            raise ValueError(f"sparsity.options.layer_targets: unknown layer(s) {', '.join(unknown)} for method "
                             f"'{self.name}' (the layers it prunes: {_some(list(layers))})")
        return {n: self.layer_targets.get(n, uniform) for n in layers}

    def attach(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` for training with this method (called once per stage)."""
        self._keeper = MaskKeeper(model)
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        """One-shot mask computation: the prune stage of a ``one_shot`` method. A pipeline runs
        no prune stage for other protocols; their ``prune`` is for direct use (or a no-op)."""

    def param_groups(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        return groups

    # --- training hooks -----------------------------------------------------------------
    def on_train_start(self, steps_per_epoch: int, epochs: int, start_epoch: int = 0) -> None:
        """Once per training stage (and again on resume, with the epoch it resumes from),
        after ``attach`` and ``load_state_dict``: lets schedules count in steps."""

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def before_step(self) -> None:
        if self._keeper:
            self._keeper.mask_grads()

    def after_step(self) -> None:
        if self._keeper:
            self._keeper.mask_weights()

    # --- export -------------------------------------------------------------------------
    def finalize(self, model: nn.Module) -> nn.Module:
        """Plain modules with zeros in ``weight`` and a ``weight_mask`` buffer per sparse layer."""
        return model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``pruned_count(sparsity, n)`` smallest-|w| entries (exact count; among
    equal magnitudes the lower flat index is pruned first)."""
    n = weight.numel()
    k = pruned_count(sparsity, n)
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = False
    return mask.view_as(weight)


class StepScheduled(SparseMethod):
    """A method whose masks follow a schedule over the stage's optimizer steps (GMP, ST-3).

    ``step`` counts steps within the stage; a resumed stage continues from the saved step
    (``_resume_step``, set by ``load_state_dict``) or from its resume epoch. ``_update()``
    applies the schedule at the current step: at the start and after every step, so the
    next forward sees it.
    """

    total_steps: int | None = None
    step: int = 0
    _resume_step: int | None = None

    def on_train_start(self, steps_per_epoch: int, epochs: int, start_epoch: int = 0) -> None:
        self.total_steps = steps_per_epoch * epochs
        self.step = self._resume_step if self._resume_step is not None else start_epoch * steps_per_epoch
        self._resume_step = None
        self._update()

    def after_step(self) -> None:
        super().after_step()
        self.step += 1
        self._update()

    def _update(self) -> None:
        raise NotImplementedError
