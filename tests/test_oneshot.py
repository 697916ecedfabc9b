"""One-shot activation search: the mixture slot, its two optimizers, discretization, resume
from an epoch checkpoint (in process), the stage's records, and a real pipeline (slow)."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import by_stage, records

CHOICES = ["relu", "tanh", "silu", "elu"]

PIPELINE = """
name: os
seed: 0
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.9}
defaults:
  train: {batch_size: 64, optimizer: {name: adam, lr: 0.003}}
stages:
  - {name: dense, kind: train, epochs: 1}
  - {name: prune, kind: prune}
  - {name: search, kind: activation_search, algorithm: oneshot, space: safs13,
     options: {relaxation: gumbel, warmup_epochs: 1}, epochs_per_candidate: 3}
  - {name: stage1, kind: train, epochs: 2}
"""


def _model():
    from safs.activations import replace_activations

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))
    return replace_activations(net)


def test_dominant_logit_is_its_operator():
    from safs.activations import create_operator
    from safs.activations.mixture import MixtureSlot

    x = torch.randn(64, 5)
    for relaxation in ("softmax", "gumbel"):
        mix = MixtureSlot(CHOICES, relaxation)
        with torch.no_grad():
            mix.alpha.fill_(1.5)
            mix.beta.fill_(0.7)
            mix.arch_logits.copy_(torch.tensor([0.0, 0.0, 200.0, 0.0]))
        for train in (True, False):
            mix.train(train)
            mix.tau = 1.0
            expected = create_operator("silu")(x, mix.alpha, mix.beta)
            torch.testing.assert_close(mix(x), expected)


def test_mixture_chain_stays_bounded_and_finite_for_every_operator():
    """A uniform mixture over every operator, stacked as in a network, keeps each slot's
    output within ±BOUND and its gradients finite. Unclamped outputs let symexp's exp(50) /
    n compound slot after slot (a loss of ~1e20 from the first step on a pruned LeNet-5,
    NaN within two epochs); this chain overflowed to inf/NaN gradients before the output
    clamp."""
    from safs.activations import list_operators
    from safs.activations.mixture import BOUND, MixtureSlot

    torch.manual_seed(0)
    layers, mixes = [], []
    for _ in range(4):
        layers.append(torch.nn.Linear(16, 16))
        mixes.append(MixtureSlot(list_operators()))
    x = torch.randn(32, 16) * 30
    h = x
    for lin, mix in zip(layers, mixes):
        h = mix(lin(h))
        assert torch.isfinite(h).all() and h.abs().max() <= BOUND
    torch.nn.functional.cross_entropy(h, torch.zeros(32, dtype=torch.long)).backward()
    params = [p for m in layers + mixes for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    assert all(torch.isfinite(m.arch_logits.grad).all() for m in mixes)


def test_to_mixture_keeps_scales_and_discretize_restores_slots():
    from safs.activations import ActivationSlot, genome, slots
    from safs.activations.mixture import discretize, mixture_slots, to_mixture

    net = _model()
    before = list(slots(net))
    to_mixture(net, CHOICES)
    assert list(mixture_slots(net)) == before and not slots(net)
    with torch.no_grad():
        mixture_slots(net)["3"].arch_logits[1] = 3.0
    assert discretize(net) == {"1": "relu", "3": "tanh"}
    assert all(isinstance(net[i], ActivationSlot) for i in (1, 3)) and genome(net) == {"1": "relu", "3": "tanh"}


def test_logits_only_through_the_arch_optimizer():
    """The weight optimizer holds no logit, the arch optimizer only logits; a training epoch
    with the logit steps off leaves the logits where they were, and a logit step alone moves
    no weight."""
    from safs.activations.mixture import arch_parameters, to_mixture, weight_parameters
    from safs.stages.oneshot import search_epoch

    net = _model()
    to_mixture(net, CHOICES)
    arch, weights = arch_parameters(net), weight_parameters(net)
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    w_opt = torch.optim.SGD(weights, lr=0.1)
    a_opt = torch.optim.Adam(arch, lr=0.1)
    assert {id(p) for g in a_opt.param_groups for p in g["params"]} == {id(p) for p in arch}
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(4)]

    logits0 = [p.detach().clone() for p in arch]
    search_epoch(net, data, iter(data * 10), w_opt, None)  # warm-up: weights only
    assert all(torch.equal(a, b) for a, b in zip(logits0, arch))

    # A logit step on its own: an optimizer with lr 0 for the weights makes their step a no-op,
    # so any weight change would come from the arch optimizer.
    frozen = torch.optim.SGD(weights, lr=0.0)
    w0 = [p.detach().clone() for p in weights]
    search_epoch(net, data, iter(data * 10), frozen, a_opt, arch_split="val")
    assert all(torch.equal(a, b) for a, b in zip(w0, weights))
    assert any(not torch.equal(a, b) for a, b in zip(logits0, arch))
    assert all(p.grad is None for p in arch)

    logits1 = [p.detach().clone() for p in arch]
    search_epoch(net, data, iter(data * 10), w_opt, a_opt, arch_split="train")
    assert any(not torch.equal(a, b) for a, b in zip(logits1, arch))


def test_options_are_validated():
    from safs.config import ConfigError, parse_pipeline

    raw = yaml.safe_load(PIPELINE)
    raw["stages"][2]["options"] = {"relaxation": "hard"}
    with pytest.raises((ConfigError, ValueError), match="relaxation"):
        parse_pipeline(raw)
    raw["stages"][2]["options"] = {"temperature": 1}
    with pytest.raises((ConfigError, ValueError), match="accepted"):
        parse_pipeline(raw)
    raw["stages"][2]["options"] = {}
    raw["stages"][2]["fidelity"] = {"min_epochs": 1}
    with pytest.raises((ConfigError, ValueError), match="fidelity"):
        parse_pipeline(raw)


def test_listed_with_its_options():
    from safs.search import is_one_trial, list_optimizers, optimizer_options

    assert "oneshot" in list_optimizers() and is_one_trial("oneshot") and not is_one_trial("lahc")
    assert {"relaxation", "tau_start", "tau_end", "arch_split", "arch_lr", "arch_weight_decay",
            "warmup_epochs"} <= set(optimizer_options("oneshot"))


# --- the trial, in process: Tune's report and checkpoint replaced by a recorder ------------------

class _Killed(Exception):
    pass


@pytest.fixture
def search_spec(tmp_path, one_torch_thread):
    """The search stage's spec of PIPELINE over a freshly pruned model (no Ray)."""
    from safs.config import parse_pipeline
    from safs.model_file import new_model, save_model, model_meta
    from safs.plan import plan
    from safs.sparsity import create_method
    from safs.stages import common

    plans = plan(parse_pipeline(yaml.safe_load(PIPELINE)), tmp_path / "results")
    spec = dict(plans[2].spec, resume_from=[])
    ds = common.dataset(spec, torch.device("cpu"))
    torch.manual_seed(0)
    model = new_model(spec, ds)
    method = create_method("lwm", 0.9, {})
    model = method.attach(model)
    method.prune(model)
    path = tmp_path / "input.pt"
    save_model(path, method.finalize(model), model_meta(spec, ds), "lwm")
    spec["input"] = str(path)
    return spec


def _run(spec, monkeypatch, out: Path, kill_after: int | None = None):
    """Run the trial; each report's checkpoint is copied to ``out/checkpoint_NNNNNN``."""
    from safs.stages import oneshot, session

    out.mkdir(parents=True, exist_ok=True)
    reports = []

    class Recording:
        def report(self, metrics, checkpoint=None):
            reports.append(metrics)
            if checkpoint is not None:
                shutil.copytree(checkpoint, out / f"checkpoint_{metrics['epoch']:06d}", dirs_exist_ok=True)
            if kill_after is not None and metrics["epoch"] >= kill_after:
                raise _Killed

        restored = contextlib.nullcontext  # continued only from spec["resume_from"]

    try:
        with session.use(Recording()):
            oneshot.run_trial(spec, {"token": 0, "genome": {}})
    except _Killed:
        pass
    return reports


def test_trial_discretizes_to_the_recorded_argmax_and_resumes(search_spec, tmp_path, monkeypatch):
    import pandas as pd

    from safs.model_file import load_model

    whole = _run(search_spec, monkeypatch, tmp_path / "whole")
    assert [r["epoch"] for r in whole] == [1, 2, 3]
    assert not whole[0]["arch_active"] and whole[1]["arch_active"]  # warmup_epochs: 1
    assert whole[0]["tau"] > whole[2]["tau"]  # annealed
    last = tmp_path / "whole" / "checkpoint_000003"
    mix = pd.DataFrame(json.loads((last / "mixture.json").read_text()))
    assert sorted(mix["epoch"].unique()) == [1, 2, 3]
    final = mix[mix["epoch"] == 3]
    argmax = final.loc[final.groupby("slot")["weight"].idxmax()].set_index("slot")["operator"].to_dict()
    model, blob = load_model(last / "model.pt")
    assert blob["genome"] == argmax == json.loads(whole[-1]["genome"])
    # The epoch-1 weights are uniform (warm-up), later ones are not.
    assert final.groupby("slot")["weight"].std().max() > 0
    torch.testing.assert_close(torch.tensor(mix[mix["epoch"] == 1]["weight"].to_numpy()),
                               torch.full((len(mix[mix["epoch"] == 1]),), 1 / 13, dtype=torch.float64))

    # Killed after epoch 2, continued from its checkpoint: the same mixture and genome.
    part = _run(search_spec, monkeypatch, tmp_path / "part", kill_after=2)
    assert [r["epoch"] for r in part] == [1, 2]
    (tmp_path / "part" / "trial").mkdir()
    shutil.move(tmp_path / "part" / "checkpoint_000002", tmp_path / "part" / "trial" / "checkpoint_000002")
    spec = dict(search_spec, resume_from=[str(tmp_path / "part" / "trial")])
    rest = _run(spec, monkeypatch, tmp_path / "rest")
    assert [r["epoch"] for r in rest] == [3] and rest[0]["start_epoch"] == 2
    resumed = pd.DataFrame(json.loads((tmp_path / "rest" / "checkpoint_000003" / "mixture.json").read_text()))
    assert resumed[["epoch", "slot", "operator"]].equals(mix[["epoch", "slot", "operator"]])
    assert (resumed["weight"] - mix["weight"]).abs().max() < 1e-5
    assert rest[0]["genome"] == whole[-1]["genome"]


def test_rung_spearman():
    import pandas as pd

    from safs.runner import fidelity_rungs, rung_spearman

    stage = {"epochs_per_candidate": 9, "fidelity": {"min_epochs": 1, "reduction_factor": 3}}
    assert fidelity_rungs(stage) == [1, 3]
    trials = pd.DataFrame({"status": ["done", "done", "done", "stopped"], "epochs": [9, 9, 9, 1],
                           "val_acc_per_epoch": [[0.1] * 9, [0.3, 0.2] + [0.2] * 7, [0.2, 0.9] + [0.5] * 7, [0.9]],
                           "score": [0.1, 0.3, 0.9, 0.9]})
    rho = rung_spearman(trials, stage)
    assert rho["1"] == pytest.approx(0.5) and rho["3"] == pytest.approx(1.0)


ASHA_PIPELINE = """
name: asha
seed: 0
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.9}
resources: {max_concurrent_trials: 2}
defaults:
  train: {batch_size: 64, optimizer: {name: adam, lr: 0.003}}
stages:
  - {name: dense, kind: train, epochs: 1}
  - {name: prune, kind: prune}
  - {name: search, kind: activation_search, algorithm: random, options: {samples: 12},
     fidelity: {min_epochs: 1, reduction_factor: 2}, epochs_per_candidate: 4, max_concurrent: 2}
"""


@pytest.mark.slow
def test_asha_search_records_rung_spearman_of_its_trials(tmp_path, ray_session, one_torch_thread):
    """A real successive-halving search: stage.json's ``rung_spearman`` is Spearman's rho,
    recomputed here from the trials' own result lines (best validation accuracy within the
    rung's epochs) against trials.parquet's full-budget scores."""
    import math

    import pandas as pd
    from scipy import stats

    import safs
    from conftest import trials_by_token
    from safs.tune.trials import result_lines

    (tmp_path / "p.yaml").write_text(ASHA_PIPELINE)
    safs.run(tmp_path / "p.yaml", results=tmp_path / "results", quiet=True)
    run_dir = tmp_path / "results" / "asha"
    search = by_stage(records(run_dir), "search")
    assert search["status"] == "done"
    rho = search["search"]["rung_spearman"]
    assert set(rho) == {"1", "2"}
    [sdir] = run_dir.glob("*-search-*")
    trials = pd.read_parquet(sdir / "trials.parquet")
    full = trials[(trials["status"] == "done") & (trials["epochs"] == 4)]
    assert len(full) >= 2 and (trials["epochs"] < 4).any()  # some reached the full budget, some were stopped
    dirs = trials_by_token(sdir)
    for rung in (1, 2):
        early = []
        for token in full["token"]:
            lines = [x for d in dirs[int(token)] for x in result_lines(d / "result.json")]
            early.append(max(x["val_acc"] for x in lines if x["epoch"] <= rung))
        expected = stats.spearmanr(early, full["score"]).statistic
        if math.isnan(expected):  # a constant side: no correlation to record
            assert rho[str(rung)] is None
        else:
            assert rho[str(rung)] == pytest.approx(expected, abs=1e-9)


# --- a real pipeline ---------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_oneshot_genome_retrains(tmp_path, ray_session, one_torch_thread):
    import pandas as pd

    import safs

    (tmp_path / "p.yaml").write_text(PIPELINE)
    safs.run(tmp_path / "p.yaml", results=tmp_path / "results", quiet=True)
    run_dir = tmp_path / "results" / "os"
    recs = records(run_dir)
    search, stage1 = by_stage(recs, "search"), by_stage(recs, "stage1")
    assert search["status"] == stage1["status"] == "done"
    assert search["search"]["algorithm"] == "oneshot" and search["search"]["search_epochs"] == 3
    assert search["search"]["candidates"] == 1
    [sdir] = run_dir.glob("*-search-*")
    mix = pd.read_parquet(sdir / "mixture.parquet")
    final = mix[mix["epoch"] == mix["epoch"].max()]
    argmax = final.loc[final.groupby("slot")["weight"].idxmax()].set_index("slot")["operator"].to_dict()
    assert search["genome"] == argmax == search["search"]["best_genome"]
    assert stage1["genome"] == argmax
    trials = pd.read_parquet(sdir / "trials.parquet")
    assert json.loads(trials["genome"][0]) == argmax
    assert stage1["row"]["achieved_sparsity"] == pytest.approx(search["row"]["achieved_sparsity"], abs=1e-6)
    assert stage1["row"]["test_acc"] > 0.5


def test_mixture_plot(tmp_path):
    import pandas as pd

    from safs.report.plots import plot

    stage = tmp_path / "run" / "03-search-abc123"
    stage.mkdir(parents=True)
    rows = [{"epoch": e, "slot": s, "operator": o, "weight": w}
            for e in (1, 2) for s in ("a", "b") for o, w in (("relu", 0.5 + e / 10), ("tanh", 0.5 - e / 10))]
    pd.DataFrame(rows).to_parquet(stage / "mixture.parquet")
    fig = plot("mixture", [tmp_path], tmp_path / "m.png")
    assert (tmp_path / "m.png").is_file() and len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    with pytest.raises(ValueError, match="mixture"):
        plot("mixture", [tmp_path / "run" / "03-search-abc123" / "none"], tmp_path / "x.png")


def test_an_overflowing_operator_does_not_poison_the_mixture():
    """safs13 holds symexp, whose exp overflows past |x| = 88: alone, such a candidate fails;
    inside a mixture it would make every slot inf or NaN, forward and backward."""
    import torch

    from safs.activations.mixture import MixtureSlot
    from safs.search.space import load_choices, resolve_space

    slot = MixtureSlot(load_choices(resolve_space("safs13")))
    x = (torch.randn(256) * 500).requires_grad_()
    y = slot(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(slot.arch_logits.grad).all()
