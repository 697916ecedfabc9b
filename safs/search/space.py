"""Activation search spaces: candidate-operator files and the per-model genome space.

A space file (``search_spaces/activations/*.yaml``) is a ConfigSpace YAML serialisation
holding one categorical hyperparameter, ``operator``, whose choices are the candidate
operators. It is model-independent: :func:`genome_space` expands it to one gene per
activation slot of a concrete model, so one file serves every model in the registry.
"""

from __future__ import annotations

from pathlib import Path

from safs.resources import data_dir
from safs.search.base import GenomeSpace

SPACES_DIR = data_dir("spaces") / "activations"  # search_spaces/activations (package data when installed)
PARAMETER = "operator"


def list_spaces() -> list[str]:
    """Names of the built-in activation spaces."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A built-in space name (``safs13``) or a YAML path (relative to ``base_dir``)."""
    return resolve_yaml(name_or_path, SPACES_DIR, "activation space", base_dir)


def resolve_yaml(name_or_path: str | Path, builtin_dir: Path, what: str, base_dir: Path | None = None) -> Path:
    """A built-in file of ``builtin_dir`` by stem, or a YAML path (relative to ``base_dir``)."""
    builtins = sorted(f.stem for f in builtin_dir.glob("*.yaml"))
    if str(name_or_path) in builtins:
        return builtin_dir / f"{name_or_path}.yaml"
    p = Path(name_or_path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    raise ValueError(f"unknown {what} '{name_or_path}'; accepted: {', '.join(builtins)}, "
                     "or the path of a ConfigSpace YAML file")


def load_choices(path: str | Path, operators: list[str] | None = None) -> list[str]:
    """The candidate operators of a space file, checked against ``operators`` (the operator
    registry's names, ``safs.activations.list_operators()``) when given."""
    import ConfigSpace as CS

    try:
        cs = CS.ConfigurationSpace.from_yaml(Path(path))
    except Exception as e:  # ConfigSpace raises assorted errors for malformed files
        raise ValueError(f"{Path(path).name}: not a ConfigSpace YAML file ({type(e).__name__}: {e})") from None
    hp = cs.get(PARAMETER)
    if hp is None or not isinstance(hp, CS.CategoricalHyperparameter):
        raise ValueError(f"{Path(path).name}: needs one categorical hyperparameter named '{PARAMETER}'")
    choices = [str(c) for c in hp.choices]
    unknown = [c for c in choices if operators is not None and c not in operators]
    if unknown:
        raise ValueError(f"{Path(path).name}: unknown operator(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(operators)}")
    return choices


def genome_space(current: dict[str, str], choices: list[str]) -> GenomeSpace:
    """One gene per activation slot of a model (``current``: its genome, slot -> operator,
    ``safs.activations.genome(model)``); the baseline is the slots' current operator."""
    if not current:
        raise ValueError("the model has no activation slots to search")
    ops = set(current.values())
    return GenomeSpace(slots=tuple(current), choices=tuple(choices),
                       baseline=next(iter(ops)) if len(ops) == 1 else None)
