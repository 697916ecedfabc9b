"""Hyperparameter (stage-2, HPO) search spaces: ConfigSpace YAML files that set training settings.

A space file (``search_spaces/hpo/*.yaml``) is a ConfigSpace YAML serialisation (written by
ConfigSpace's ``to_yaml``; ``#`` comment lines may precede it). Every hyperparameter's ``meta`` says
what it sets:

``target`` (required)
    The dotted path of a training setting: a field of :class:`safs.settings.TrainingSettings`
    (``batch_size``, ``label_smoothing``, ...) or of its ``optimizer`` / ``schedule`` blocks
    (``optimizer.lr``, ``schedule.name``, ...). Several hyperparameters may share a target when
    conditions make at most one of them active (``lr_SGD``, ``lr_Adam``, ... in ``safs.yaml``).
``implies`` (optional; categorical, ordinal and constant hyperparameters)
    ``{value: {target: setting, ...}}``: settings fixed whenever that value is chosen, e.g. the
    constants the original SAFS code hard-coded per scheduler (``cosine_warm_restarts`` implies
    ``schedule.eta_min: 5e-5``). Implied settings are applied first, then the hyperparameters'
    values, so a searched hyperparameter overrides a preset.

A configuration maps to training settings with :func:`to_training_settings`; the search starts from
the stage's own settings with :func:`with_defaults`: both backends ask the default configuration
first, so trial 0 (token 0, ``origin`` ``default`` in ``trials.parquet``) is the stage's own training,
as far as the space can express it (under multi-fidelity SMAC, at the lowest budget first).

Options of :func:`load_space` (see :data:`OPTIONS`): ``linear_weight_decay`` samples every
log-scaled ``optimizer.weight_decay`` hyperparameter uniformly on the same bounds instead (the
original's sampling, linear on [1e-5, 1e-1] in ``safs.yaml``).

Pure Python and ConfigSpace: no torch import.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from safs.io import deep_merge, plain
from safs.resources import data_dir
from safs.settings import TrainingSettings

SPACES_DIR = data_dir("spaces") / "hpo"  # search_spaces/hpo (package data when installed)

META_KEYS = ("target", "implies")
OPTIONS = {
    "linear_weight_decay": "sample optimizer.weight_decay uniformly on its bounds, not log-uniformly "
                           "(the original SAFS sampling)",
}

# The original code's per-model training settings (its main.py and settings.py; batch 256 for all), as
# TrainingSettings overrides keyed "model/dataset" with safs names. The original's "VGG-16" is a
# VGG11 in its released code, so both VGGs get its settings. ResNet-18/CIFAR-10 trained with lr 1e-3
# but started its HPO at 1e-2; the HPO default is given here. ResNet-18/ImageNet16 and EfficientNet-B0
# used CosineWarmRestarts(T0 = epochs // 4, eta_min 5e-5).
_SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False}
_CWR = {"name": "cosine_warm_restarts", "t0": None, "eta_min": 5e-5}
PAPER_DEFAULTS: dict[str, dict] = {
    "lenet5/mnist": {"batch_size": 256, "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4,
                                                      "betas": (0.9, 0.99)},
                     "schedule": {"name": "constant"}},
    "vgg16/cifar10": {"batch_size": 256, "optimizer": {**_SGD, "lr": 1e-3, "weight_decay": 5e-4},
                      "schedule": {"name": "halving"}},
    "vgg11/cifar10": {"batch_size": 256, "optimizer": {**_SGD, "lr": 1e-3, "weight_decay": 5e-4},
                      "schedule": {"name": "halving"}},
    "resnet18/cifar10": {"batch_size": 256, "optimizer": {**_SGD, "lr": 1e-2, "weight_decay": 5e-4},
                         "schedule": {"name": "plateau", "gamma": 0.05, "patience": 2}},
    "resnet18/imagenet16": {"batch_size": 256, "optimizer": {**_SGD, "lr": 0.1, "weight_decay": 2e-5},
                            "schedule": dict(_CWR)},
    "efficientnet_b0/imagenet16": {"batch_size": 256, "optimizer": {**_SGD, "lr": 1e-3, "weight_decay": 5e-4},
                                   "schedule": dict(_CWR)},
}


def list_spaces() -> list[str]:
    """Names of the built-in HPO spaces."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space(name_or_path: str | Path, base_dir: Path | None = None) -> Path:
    """A built-in space name (``safs``) or a YAML path (relative to ``base_dir``)."""
    from safs.search.space import resolve_yaml

    return resolve_yaml(name_or_path, SPACES_DIR, "HPO space", base_dir)


def paper_settings(key: str) -> dict:
    """The full TrainingSettings dump of a :data:`PAPER_DEFAULTS` entry (``"lenet5/mnist"``)."""
    if key not in PAPER_DEFAULTS:
        raise ValueError(f"unknown model/dataset '{key}'; accepted: {', '.join(PAPER_DEFAULTS)}")
    return TrainingSettings.model_validate(deep_merge(TrainingSettings().model_dump(), PAPER_DEFAULTS[key])).model_dump()


# --------------------------------------------------------------------------- targets

@lru_cache(maxsize=1)
def _fields() -> dict[str, Any]:
    """Dotted training-setting path -> pydantic FieldInfo, for every leaf setting."""
    from pydantic import BaseModel

    out: dict[str, Any] = {}
    for name, info in TrainingSettings.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update({f"{name}.{sub}": sub_info for sub, sub_info in ann.model_fields.items()})
        else:
            out[name] = info
    return out


def list_targets() -> list[str]:
    """The training settings a hyperparameter may target."""
    return list(_fields())


@lru_cache(maxsize=None)
def _adapter(target: str):
    from pydantic import TypeAdapter

    info = _fields()[target]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def _accepted(target: str) -> str:
    """The accepted values of a target, for messages."""
    ann = _fields()[target].annotation
    if typing.get_origin(ann) is typing.Literal:
        return "accepted: " + ", ".join(map(str, typing.get_args(ann)))
    bounds = [f"{sym} {getattr(m, attr)}" for m in _fields()[target].metadata
              for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
    return f"accepted: {getattr(ann, '__name__', str(ann))}" + (f" {', '.join(bounds)}" if bounds else "")


def _value_problem(target: str, value: Any) -> str | None:
    """Why ``value`` cannot be the setting ``target`` (None when it can)."""
    from pydantic import ValidationError

    try:
        _adapter(target).validate_python(value)
    except ValidationError:
        return f"{value!r} is not accepted for {target}; {_accepted(target)}"
    return None


# --------------------------------------------------------------------------- loading

def load_space(path: str | Path, options: Mapping[str, Any] | None = None):
    """Read and validate a space file (a path, or a built-in name); apply ``options`` (:data:`OPTIONS`).

    Raises a one-line ``ValueError`` naming the file and, for a bad hyperparameter, its name and
    the accepted values.
    """
    import ConfigSpace as CS

    path = resolve_space(path)
    src = path.name
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{src}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}")
    try:
        cs = CS.ConfigurationSpace.from_yaml(path)
    except Exception as e:  # ConfigSpace raises assorted errors for malformed files
        raise ValueError(f"{src}: not a ConfigSpace YAML file ({type(e).__name__}: {e})".splitlines()[0]) from None
    if len(cs) == 0:
        raise ValueError(f"{src}: the space has no hyperparameters")
    for hp in cs.values():
        _check_hyperparameter(src, hp)
    if options.get("linear_weight_decay"):
        cs = _rebuild(cs, _linear_weight_decay)
    return cs


def _linear_weight_decay(hp: dict) -> None:
    if hp["meta"]["target"] == "optimizer.weight_decay" and hp.get("log"):
        hp["log"] = False  # same bounds, uniform sampling


def _values_of(hp) -> list | None:
    """The values of a categorical, ordinal or constant hyperparameter (None for numeric ones)."""
    for attr in ("choices", "sequence"):
        if hasattr(hp, attr):
            return list(getattr(hp, attr))
    if hasattr(hp, "value"):
        return [hp.value]
    return None


def _check_hyperparameter(src: str, hp) -> None:
    where = f"{src}: hyperparameter '{hp.name}'"
    meta = hp.meta
    if not isinstance(meta, Mapping) or "target" not in meta:
        raise ValueError(f"{where}: meta.target is missing (the training setting it sets); "
                         f"accepted targets: {', '.join(list_targets())}")
    extra = sorted(set(meta) - set(META_KEYS), key=str)
    if extra:
        raise ValueError(f"{where}: unknown meta key(s) {', '.join(map(str, extra))}; accepted: {', '.join(META_KEYS)}")
    target = meta["target"]
    if target not in _fields():
        raise ValueError(f"{where}: unknown meta.target {target!r}; accepted: {', '.join(list_targets())}")
    values = _values_of(hp)
    if values is None:  # numeric: both bounds, and a value inside (a float range cannot set an integer)
        lower, upper = hp.lower, hp.upper
        probes = [lower, upper] + ([(lower + upper) / 2] if isinstance(lower, float) else [])
    else:
        probes = values
    for v in probes:
        problem = _value_problem(target, plain(v))
        if problem:
            raise ValueError(f"{where}: {problem}")
    implies = meta.get("implies")
    if implies is None:
        return
    if values is None or not isinstance(implies, Mapping):
        kinds = "categorical, ordinal or constant" if values is None else "a mapping {value: {target: setting}}"
        raise ValueError(f"{where}: meta.implies needs {kinds}")
    for key, settings in implies.items():
        if not any(_matches(key, v) for v in values):
            raise ValueError(f"{where}: meta.implies has {key!r}, not a value of the hyperparameter; "
                             f"accepted: {', '.join(map(str, values))}")
        if not isinstance(settings, Mapping):
            raise ValueError(f"{where}: meta.implies.{key}: expected a mapping {{target: setting}}")
        for t, v in settings.items():
            if t not in _fields():
                raise ValueError(f"{where}: meta.implies.{key}: unknown target {t!r}; "
                                 f"accepted: {', '.join(list_targets())}")
            problem = _value_problem(t, v)
            if problem:
                raise ValueError(f"{where}: meta.implies.{key}: {problem}")


def _rebuild(cs, edit):
    """A copy of ``cs`` with ``edit(hyperparameter_dict)`` applied to each serialised hyperparameter."""
    import ConfigSpace as CS

    d = copy.deepcopy(cs.to_serialized_dict())
    for h in d["hyperparameters"]:
        edit(h)
    return CS.ConfigurationSpace.from_serialized_dict(d)


# --------------------------------------------------------------------------- defaults

def with_defaults(cs, settings: Mapping[str, Any]):
    """A copy of ``cs`` whose defaults are the training ``settings`` (a ``TrainingSettings`` dump)
    wherever that value is legal for the hyperparameter: inside its range or among its choices,
    and active under its parents' (new) defaults. Elsewhere the file's default stays, so the
    default configuration is always valid.
    """
    import ConfigSpace as CS

    d = cs.to_serialized_dict()
    by_name = {h["name"]: h for h in d["hyperparameters"]}
    current = cs
    for hp in list(cs.values()):  # topological order: parents before children
        entry = by_name[hp.name]
        found, value = _get(settings, _target(hp))
        if not found or "default_value" not in entry:  # constants have no default to move
            continue
        value = plain(value)
        try:
            legal = bool(hp.legal_value(value))
        except (TypeError, ValueError):
            legal = False
        if not legal or _same(value, entry["default_value"]):
            continue
        old, entry["default_value"] = entry["default_value"], value
        try:
            candidate = CS.ConfigurationSpace.from_serialized_dict(copy.deepcopy(d))  # it pops keys
            default = candidate.get_default_configuration()
            default.check_valid_configuration()
            ok = hp.name in dict(default)  # active under its parents' defaults
        except Exception:  # an illegal default, a forbidden combination: keep the file's
            ok = False
        if ok:
            current = candidate
        else:
            entry["default_value"] = old
    return current if current is not cs else CS.ConfigurationSpace.from_serialized_dict(d)


# --------------------------------------------------------------------------- configurations

def to_training_settings(settings: Mapping[str, Any], config: Mapping[str, Any], cs=None) -> dict:
    """``settings`` (a ``TrainingSettings`` dump, or a stage's dump) with ``config`` applied.

    ``config``: a ConfigSpace ``Configuration`` (its space is used), or a plain mapping of active
    hyperparameter values with its space ``cs``. Implied settings of the chosen values are applied
    first, then the values at their targets; keys that are not hyperparameters of the space
    (``budget``, ...) and inactive hyperparameters (absent) are ignored. Unconditional constants
    apply even when absent. The result validates as ``TrainingSettings``; its keys are those of
    ``settings`` plus every ``TrainingSettings`` field.
    """
    import ConfigSpace as CS
    from pydantic import ValidationError

    if cs is None:
        cs = getattr(config, "config_space", None)
        if cs is None:
            raise TypeError("to_training_settings: pass the configuration space (cs) with a plain dict config")
    values = {k: plain(v) for k, v in dict(config).items()}
    implied: dict[str, Any] = {}
    direct: dict[str, tuple[str, Any]] = {}
    for hp in cs.values():
        if hp.name in values:
            value = values[hp.name]
        elif isinstance(hp, CS.Constant) and not cs.parents_of[hp.name]:
            value = plain(hp.value)  # an unconditional constant
        else:
            continue
        target = _target(hp)
        if target in direct and not _same(direct[target][1], value):
            raise ValueError(f"configuration: hyperparameters '{direct[target][0]}' and '{hp.name}' both set "
                             f"{target} ({direct[target][1]!r} vs {value!r}); "
                             "the space's conditions must keep one active")
        direct[target] = (hp.name, value)
        for t, v in _implied(hp, value).items():
            if t in implied and not _same(implied[t][1], v):
                raise ValueError(f"configuration: '{implied[t][0]}' and '{hp.name}' imply different {t} "
                                 f"({implied[t][1]!r} vs {v!r})")
            implied[t] = (hp.name, v)
    result = copy.deepcopy(dict(settings))
    for t, (_, v) in implied.items():
        _set(result, t, copy.deepcopy(v))
    for t, (_, v) in direct.items():
        _set(result, t, v)
    own = {k: v for k, v in result.items() if k in TrainingSettings.model_fields}
    try:
        checked = TrainingSettings.model_validate(own)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"configuration {values}: {loc}: {err['msg'].removeprefix('Value error, ')}") from None
    return {**result, **checked.model_dump()}


# --------------------------------------------------------------------------- helpers

def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (``True`` is not ``1``; ``1`` is ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _matches(key: Any, value: Any) -> bool:
    """An ``implies`` key names this value (YAML may type a key differently: ``64`` vs ``'64'``)."""
    return _same(key, value) or str(key) == str(value)


def _implied(hp, value: Any) -> dict:
    """The settings that choosing ``value`` of ``hp`` implies."""
    implies = (hp.meta or {}).get("implies") or {}
    return next((dict(v) for k, v in implies.items() if _matches(k, value)), {})


def _target(hp) -> str:
    target = (hp.meta or {}).get("target") if isinstance(hp.meta, Mapping) else None
    if target not in _fields():
        raise ValueError(f"hyperparameter '{hp.name}': no valid meta.target ({target!r}); load spaces with load_space")
    return target


def _get(settings: Mapping[str, Any], target: str) -> tuple[bool, Any]:
    node: Any = settings
    for part in target.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(settings: dict, target: str, value: Any) -> None:
    *parents, leaf = target.split(".")
    node = settings
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[leaf] = value


def trial_settings(st: dict, config: dict) -> dict:
    """The stage's training settings with the configuration applied."""
    cs = load_space(resolve_space(st["space"]), st["space_options"] or None)
    base = {k: st[k] for k in TrainingSettings.model_fields}
    return {**st, **to_training_settings(base, config, cs)}
