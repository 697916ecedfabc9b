"""How a network is trained: optimizer, schedule and the other training settings shared by
train stages and every search candidate. The ground floor of the schema: imported by
``safs.config``, ``safs.hpo`` and ``safs.training``, importing nothing of safs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


def _ray_quantity(value: float) -> float:
    """Ray's rule for an accelerator share: a fraction below 1 packs several trials on one
    device (0.25: four to a GPU); from 1 up only whole devices."""
    if value > 1 and value != int(value):
        raise ValueError(f"a share above 1 must be a whole number (Ray's rule); "
                         f"accepted: a fraction in (0, 1) or a whole number (got {value})")
    return value


class ResourcesConfig(_Strict):
    """What one trial of a stage asks Ray for. Never hashed: it changes how a stage runs, not
    what it computes (a multi-worker trial splits each batch across its workers, so the
    optimizer sees the same batches; only float rounding, and batch-norm statistics without
    ``sync_bn``, differ)."""

    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_concurrent_trials: int = Field(default=1, ge=1)
    max_failures: int = Field(default=1, ge=0)
    # > 1: the trial is a Ray Train TorchTrainer of this many DDP workers (NCCL on GPU, gloo on
    # CPU), each with cpus_per_worker / gpus_per_worker; the trial itself then reserves nothing.
    workers_per_trial: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    sync_bn: bool = False  # batch norm over the whole batch (SyncBatchNorm), not each worker's share

    @field_validator("gpus_per_trial", "gpus_per_worker")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        return _ray_quantity(v)

    @model_validator(mode="after")
    def _workers(self) -> "ResourcesConfig":
        set_ = self.model_fields_set
        if self.workers_per_trial == 1:
            for key in ("cpus_per_worker", "gpus_per_worker", "sync_bn"):
                if key in set_ and getattr(self, key) != ResourcesConfig.model_fields[key].default:
                    raise ValueError(f"{key}: only for a trial of several workers; set workers_per_trial >= 2 "
                                     f"(or use cpus_per_trial / gpus_per_trial)")
        else:
            if self.sync_bn and not self.gpus_per_worker:
                raise ValueError("sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set gpus_per_worker > 0 "
                                 "or sync_bn: false")
            for key in ("cpus_per_trial", "gpus_per_trial"):
                if key in set_:
                    raise ValueError(f"{key}: a trial of {self.workers_per_trial} workers takes "
                                     f"cpus_per_worker / gpus_per_worker instead; accepted: leave {key} out")
        return self

    def per_trial(self) -> tuple[float, float]:
        """(CPUs, GPUs) one trial holds while it runs, its workers together."""
        if self.workers_per_trial > 1:
            return self.workers_per_trial * self.cpus_per_worker, self.workers_per_trial * self.gpus_per_worker
        return self.cpus_per_trial, self.gpus_per_trial
