"""One epoch, one set of weights: the selection rule, per-trial seeding, side-effect-free
finalize, and the method protocols a pipeline is checked against."""

import subprocess

import pytest
import yaml

from conftest import safs_cmd, subprocess_env
from safs.training.selection import TOLERANCE, EpochSelector


def offer_all(selector: EpochSelector, epochs: list[tuple[float, float]]) -> int:
    for i, (val, sparsity) in enumerate(epochs, start=1):
        selector.offer(i, val, sparsity)
    return selector.epoch


def test_best_is_the_best_validation_epoch_when_sparsity_is_fixed():
    assert offer_all(EpochSelector("best"), [(0.5, 0.9), (0.8, 0.9), (0.7, 0.9)]) == 2


def test_a_sparser_epoch_supersedes_a_denser_one_whatever_its_accuracy():
    # GMP from dense: the early, half-sparse epoch is the most accurate but is not the final network.
    history = [(0.79, 0.50), (0.26, 0.79), (0.08, 0.976), (0.10, 0.98), (0.12, 0.98), (0.11, 0.98)]
    s = EpochSelector("best")
    assert offer_all(s, history) == 5
    assert s.sparsity == 0.98 and s.val_acc == 0.12


def test_epochs_within_the_tolerance_count_as_the_same_sparsity():
    s = EpochSelector("best")
    assert offer_all(s, [(0.6, 0.9), (0.7, 0.9 + TOLERANCE / 2), (0.65, 0.9 + TOLERANCE / 3)]) == 2
    # a denser epoch than the kept one never wins, however accurate
    assert offer_all(EpochSelector("best"), [(0.6, 0.9), (0.99, 0.5)]) == 1


def test_last_keeps_the_last_epoch():
    assert offer_all(EpochSelector("last"), [(0.9, 0.9), (0.1, 0.9), (0.5, 0.9)]) == 3


def test_selector_state_round_trips():
    s = EpochSelector("best")
    offer_all(s, [(0.5, 0.9), (0.8, 0.9)])
    t = EpochSelector.from_state(s.state_dict(), "best")
    assert t == s
    t.offer(3, 0.7, 0.9)
    assert t.epoch == 2


def test_trial_seeds_depend_on_pipeline_seed_stage_candidate_and_epoch():
    import torch

    from safs.stages.common import seed_trial

    spec = {"seed": 0, "name": "sparse"}
    draws = []
    for args in [(spec, None, 0), (spec, None, 0), (spec, None, 1), (spec, 3, 0), ({**spec, "seed": 1}, None, 0),
                 ({**spec, "name": "final"}, None, 0)]:
        seed_trial(*args)
        draws.append(torch.rand(3).tolist())
    assert draws[0] == draws[1]
    assert len({tuple(d) for d in draws}) == 5


def test_finalized_leaves_the_training_state_alone(one_torch_thread):
    """2:4 Gumbel's finalize leaves learning mode and unfreezes weights: measuring an epoch
    must not do that to the model still in training."""
    import torch

    from safs.models import create_model
    from safs.sparsity import create_method
    from safs.stages.train import finalized
    from safs.training.measure import weight_sparsity

    torch.manual_seed(0)
    model = create_model("lenet5", 10, (1, 28, 28), None)
    method = create_method("nm_gumbel", 0.5, {"init": "magnitude"})
    model = method.attach(model)
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    before = model(x)
    final = finalized(method, model)
    assert method.mode == "learn"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == frozen
    assert weight_sparsity(final) > 0.3  # fc1..fc3 are 2:4, the convs stay dense
    assert torch.allclose(final.eval()(x), before, atol=1e-5)
    assert torch.equal(model(x), before)


# --------------------------------------------------------------------------- protocols

HEAD = """
name: proto
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: {method}, target: 0.9}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
"""


def parse(text: str):
    from safs.config import parse_pipeline

    return parse_pipeline(yaml.safe_load(text))


@pytest.mark.parametrize("method", ["gmp", "str", "st3", "st3_sigma", "dnw", "nm_gumbel"])
def test_a_prune_stage_for_a_during_training_method_is_refused(method):
    from safs.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse(HEAD.format(method=method) + "  - {name: cut, kind: prune}\n")
    msg = str(e.value)
    assert "sparsity.method" in msg and "'cut'" in msg and "sparse: true" in msg and "\n" not in msg


@pytest.mark.parametrize("method", ["lwm", "nm_magnitude", "sas"])
def test_prune_stages_accept_one_shot_and_architecture_methods(method):
    parse(HEAD.format(method=method) + "  - {name: cut, kind: prune}\n")


@pytest.mark.parametrize("method", ["gmp", "str", "dnw", "nm_gumbel", "sas", "lwm", "nm_magnitude"])
def test_sparse_train_stages_accept_every_method(method):
    parse(HEAD.format(method=method) + "  - {name: sparse, kind: train, epochs: 1, sparse: true}\n")


def test_the_cli_refuses_a_str_prune_stage_with_exit_2_and_writes_nothing(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD.format(method="str") + "  - {name: cut, kind: prune}\n")
    results = tmp_path / "results"
    r = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(results)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sparsity.method" in lines[0] and "'cut'" in lines[0], r.stderr
    assert not results.exists()


def test_select_is_validated_and_hashed(tmp_path):
    from safs.config import ConfigError
    from safs.plan import plan

    def text(select: str) -> str:
        return HEAD.format(method="gmp") + f"  - {{name: sparse, kind: train, epochs: 2, sparse: true, select: {select}}}\n"

    with pytest.raises(ConfigError, match="select"):
        parse(text("first"))
    best, last = (plan(parse(text(s)), tmp_path)[1] for s in ("best", "last"))
    assert best.hash != last.hash and best.spec["stage"]["select"] == "best"
