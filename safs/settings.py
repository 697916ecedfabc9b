"""How a network is trained: optimizer, schedule and the other training settings shared by
train stages and every search candidate. The ground floor of the schema: imported by
``safs.config``, ``safs.hpo`` and ``safs.training``, importing nothing of safs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # Unknown keys are errors (a typo must never silently fall back to a default).
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    """An optimizer (``safs.training.optim``): ``tadam`` is TAdam (Student-t Adam), ``fromage``
    is Fromage (no weight decay); momentum/nesterov are SGD's, betas Adam's, AdamW's and TAdam's."""

    name: Literal["sgd", "adam", "adamw", "tadam", "fromage"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @model_validator(mode="after")
    def _no_fromage_decay(self) -> "OptimizerConfig":
        if self.name == "fromage" and self.weight_decay:
            raise ValueError(f"weight_decay: fromage has no weight decay; accepted: 0 (got {self.weight_decay})")
        return self


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["constant", "cosine", "step", "halving", "cosine_warm_restarts", "linear_warmup",
                  "plateau"] = "constant"
    step_size: int | None = Field(default=30, ge=1)  # step; null: epochs // 4 (the original)
    gamma: float = Field(default=0.1, gt=0, le=1)  # step, plateau
    # Linear warm-up before any schedule but plateau: the LR multiplier goes from
    # warmup_start_factor at epoch 0 to 1 at epoch warmup_epochs. linear_warmup = warm-up, then constant.
    warmup_epochs: int = Field(default=0, ge=0)
    warmup_start_factor: float = Field(default=0.1, gt=0, le=1)
    t0: int | None = Field(default=None, ge=1)  # cosine_warm_restarts; default epochs // 4
    eta_min: float = Field(default=0.0, ge=0)  # cosine, cosine_warm_restarts
    patience: int = Field(default=2, ge=0)  # plateau (on training loss, as in the original)

    @model_validator(mode="after")
    def _warmup(self) -> "ScheduleConfig":
        if self.name == "linear_warmup" and self.warmup_epochs < 1:
            raise ValueError("warmup_epochs: linear_warmup needs warmup_epochs >= 1 (the original: 5)")
        if self.name == "plateau" and self.warmup_epochs:
            raise ValueError(f"warmup_epochs: plateau has no warm-up; accepted: 0 (got {self.warmup_epochs})")
        return self


class MixConfig(_Strict):
    """Mixup or cutmix: λ ~ Beta(alpha, alpha)."""

    alpha: float = Field(gt=0)


class AutoAugmentConfig(_Strict):
    """AutoAugment (Cubuk et al. 2019): torchvision's learned policy for ``policy``'s dataset."""

    policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"
    # Samples that share one draw of the policy: 1 (each sample its own, as the paper) or more
    # (fewer calls per batch on a GPU, less variety per batch).
    samples_per_draw: int = Field(default=1, ge=1)


class RandAugmentConfig(_Strict):
    """RandAugment (Cubuk et al. 2020): ``num_ops`` random ops per sample at ``magnitude``
    (of torchvision's 31 bins, 0..30)."""

    num_ops: int = Field(default=2, ge=1)
    magnitude: int = Field(default=9, ge=0, le=30)
    samples_per_draw: int = Field(default=1, ge=1)


class DistillConfig(_Strict):
    """Knowledge distillation from an earlier stage's model (``teacher``: its name):
    loss = (1 − alpha)·CE(student, y) + alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T))."""

    teacher: str
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)


class EmaConfig(_Strict):
    """An exponential moving average of the weights: evaluation and the kept model use it."""

    decay: float = Field(gt=0, lt=1)


# Changes how fast a run goes, not what it computes (beyond float rounding, as another device
# would): left out of a stage's hash.
UNHASHED_SETTINGS = ("compile",)
# Added after stages were first hashed: hashed only when set, so older stages keep their hashes.
HASHED_WHEN_SET = {"mixup": None, "cutmix": None, "ema": None, "random_erasing": 0.0, "autoaugment": None,
                   "randaugment": None, "distill": None, "from_scratch": False}


class TrainingSettings(_Strict):
    """How a network is trained: shared by train stages and by every search candidate."""

    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: bool | None = None  # None: the dataset's default augmentation
    # Each activation slot's α, β: frozen (the original's dense, retrain and Stage 1) or
    # learned (its Stage 2), in their own parameter group with this weight decay.
    scales_trainable: bool = False
    scales_weight_decay: float = Field(default=0.0, ge=0)
    # Recipes of the method papers (safs.training.recipes), on the batch on its device.
    mixup: MixConfig | None = None
    cutmix: MixConfig | None = None
    random_erasing: float = Field(default=0.0, ge=0, le=1)  # the probability per sample
    ema: EmaConfig | None = None
    # Image policies on the training batch, before random erasing and mixing (one of the two).
    autoaugment: AutoAugmentConfig | None = None
    randaugment: RandAugmentConfig | None = None
    # torch.compile the model for training (skipped, with a log line, where unsupported).
    compile: bool = False

    @model_validator(mode="after")
    def _one_policy(self) -> "TrainingSettings":
        if self.autoaugment is not None and self.randaugment is not None:
            raise ValueError("autoaugment: give one image policy, autoaugment or randaugment, not both")
        return self
