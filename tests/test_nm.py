"""2:4 semi-structured methods: nm_magnitude (one-shot, fixed masks) and nm_gumbel (learned masks).

Group validity is checked twice: by ``check_nm`` and by an independent count written here
from the definition (reference §1.4), for both group orders."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from safs.sparsity import create_method
from safs.sparsity.masks import MASK, masked_layers
from safs.sparsity.nm import (NMViolationError, check_nm, from_groups, is_eligible, nm_magnitude_mask,
                              to_groups)

ORDERS = ["im2col", "input_channel"]
METHODS = ["nm_magnitude", "nm_gumbel"]


def small_cnn():
    """Eligible in both orders: conv2 (C_in 8), fc; dense in both: conv1 (C_in 1, K 9), head (in 30).
    conv3 (C_in 6, 2x2: K 24) is eligible for im2col only."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3), nn.ReLU(),
                         nn.Conv2d(6, 16, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 3 * 3, 30), nn.ReLU(), nn.Linear(30, 10))


def data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def k_rows(weight: torch.Tensor, order: str) -> torch.Tensor:
    """[output rows, K] in the order's K layout, written out from the definition."""
    w = weight.detach()
    if w.dim() == 4 and order == "input_channel":
        w = w.permute(0, 2, 3, 1)  # (k_h, k_w, C_in), C_in fastest
    return w.reshape(w.shape[0], -1)  # im2col: (C_in, k_h, k_w), k_w fastest


def max_nnz_per_group(weight: torch.Tensor, order: str) -> int:
    rows = k_rows(weight, order)
    assert rows.shape[1] % 4 == 0
    return int((rows.reshape(rows.shape[0], -1, 4) != 0).sum(-1).max())


def effective_weights(model) -> dict[str, torch.Tensor]:
    """Eval-mode weights that enter conv/linear (parametrised layers: the argmax pattern)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    model.train(was)
    return out


def assert_all_groups_valid(model, method, order):
    assert check_nm(model, order) == []
    w = effective_weights(model)
    assert method.layer_names, "no eligible layer"
    for name in method.layer_names:
        assert max_nnz_per_group(w[name], order) <= 2, name
        # exactly half of every eligible layer is zero (random weights: no accidental zeros)
        assert int((w[name] == 0).sum()) == w[name].numel() // 2, name
    for name in method.dense_names:
        assert int((w[name] == 0).sum()) == 0, name


def train_steps(model, method, steps=5, opt="sgd"):
    groups = method.param_groups(model, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    if opt == "sgd":
        optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.05)
    else:
        optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.05)
    x, y = data()
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_step()
        optimizer.step()
        method.after_step()
    return optimizer


# --- options and layout -----------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_target_is_fixed_at_one_half(name):
    create_method(name, 0.5)
    with pytest.raises(ValueError, match=r"sparsity.target: .*accepted: 0.5 \(got 0.9\)"):
        create_method(name, 0.9)
    with pytest.raises(ValueError, match="group_order.*accepted: im2col, input_channel"):
        create_method(name, 0.5, {"group_order": "nchw"})
    with pytest.raises(ValueError, match="sparsity.options"):
        create_method(name, 0.5, {"bogus": 1})
    m = create_method(name, 0.5)
    assert m.control == "fixed"
    model = small_cnn()
    m.attach(model)
    if name == "nm_magnitude":
        with pytest.raises(ValueError, match="prune stage target.*accepted: 0.5"):
            m.prune(model, 0.8)


def test_group_orders_follow_the_k_layouts():
    w = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    g = to_groups(w, "im2col")
    assert g[0].tolist() == [0, 1, 2, 3]  # k_w fastest, then k_h, then C_in
    assert g[2].tolist() == [8, 9, 10, 11]  # straddles C_in 0 -> 1 (K = 72 per row)
    g = to_groups(w, "input_channel")
    assert g[0].tolist() == [w[0, c, 0, 0].item() for c in range(4)]  # C_in fastest at tap (0, 0)
    assert g[1].tolist() == [w[0, c, 0, 0].item() for c in range(4, 8)]
    assert g[2].tolist() == [w[0, c, 0, 1].item() for c in range(4)]
    for order in ORDERS:
        assert torch.equal(from_groups(to_groups(w, order), w.shape, order), w)
        lin = torch.randn(3, 8)
        assert torch.equal(to_groups(lin, order), lin.reshape(-1, 4))


def test_eligibility_depends_on_the_group_order():
    model = small_cnn()
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [is_eligible(m, "im2col") for m in layers] == [False, True, True, True, False]
    assert [is_eligible(m, "input_channel") for m in layers] == [False, True, False, True, False]
    m = create_method("nm_magnitude", 0.5, {"group_order": "input_channel"})
    m.attach(model)
    assert m.layer_names == ["3", "8"] and m.dense_names == ["0", "5", "10"]
    assert set(masked_layers(model)) == {"3", "8"}
    assert m.state_dict()["group_order"] == "input_channel"


def test_magnitude_keeps_the_two_largest_of_every_group():
    w = torch.tensor([[0.5, -0.1, 2.0, -3.0, 0.0, 0.0, 0.0, 1.0],
                      [1.0, 1.0, 1.0, 1.0, -0.2, 0.3, -0.4, 0.1]])
    assert nm_magnitude_mask(w).int().tolist() == [[0, 0, 1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1, 1, 0]]
    keep = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert nm_magnitude_mask(w, keep=keep).int().tolist() == [[1, 1, 0, 0, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1, 1, 0]]


# --- validity through training and finalize ---------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", METHODS)
def test_every_group_valid_after_attach_training_and_finalize(name, order):
    model = small_cnn()
    method = create_method(name, 0.5, {"group_order": order})
    model = method.attach(model)
    if name == "nm_magnitude":
        method.prune(model, 0.5)
    assert_all_groups_valid(model, method, order)
    train_steps(model, method, opt="sgd" if name == "nm_magnitude" else "adamw")
    assert_all_groups_valid(model, method, order)
    x, _ = data(16, seed=2)
    model.eval()
    with torch.no_grad():
        before = model(x)
    final = method.finalize(model)
    assert {type(m) for m in final.modules()} <= {nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Flatten,
                                                   nn.Linear}
    assert sorted(masked_layers(final)) == sorted(method.layer_names)
    assert_all_groups_valid(final, method, order)
    for name_, mod in masked_layers(final).items():
        assert getattr(mod, MASK).dtype == torch.bool
        assert int(getattr(mod, MASK).sum()) == mod.weight.numel() // 2
        assert torch.count_nonzero(mod.weight[~getattr(mod, MASK)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(final(x), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_magnitude_masks_stay_fixed_and_kept_weights_train(opt):
    model = small_cnn()
    method = create_method("nm_magnitude", 0.5)
    method.attach(model)  # from scratch: attach prunes
    masks = {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}
    w0 = {n: m.weight.detach().clone() for n, m in masked_layers(model).items()}
    train_steps(model, method, steps=8, opt=opt)
    for n, m in masked_layers(model).items():
        assert torch.equal(getattr(m, MASK), masks[n])
        assert torch.equal(m.weight != 0, masks[n])
        assert not torch.equal(m.weight, w0[n])


def test_gumbel_trains_only_the_logits_and_eval_is_deterministic():
    model = small_cnn()
    method = create_method("nm_gumbel", 0.5)
    method.attach(model)
    groups = method.param_groups(model, [{"params": list(model.parameters())}])
    assert len(groups) == 1 and groups[0]["lr"] == 1.0 and groups[0]["weight_decay"] == 1e-4
    logits = method.logits(model)
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in logits]
    assert len(logits) == len(method.layer_names)
    assert all(z.shape[1] == 6 for z in logits)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "logits" not in n}
    z0 = [z.detach().clone() for z in logits]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "logits" not in n)

    x, _ = data(16, seed=3)
    model.train()
    torch.manual_seed(0)
    samples = {tuple(model[3].weight.flatten().ne(0).tolist()) for _ in range(5)}
    assert len(samples) > 1  # training masks are sampled
    model.eval()
    torch.manual_seed(1)
    e1 = model(x)
    torch.manual_seed(2)
    e2 = model(x)
    assert torch.equal(e1, e2)

    train_steps(model, method, steps=3, opt="adamw")
    for n, p in model.named_parameters():
        if "logits" not in n:
            assert torch.equal(p, frozen[n]), n
    assert all(not torch.equal(z, z_) for z, z_ in zip(logits, z0))
    final = method.finalize(model)
    assert all(p.requires_grad for p in final.parameters())  # unfrozen again
    assert not any("logits" in n for n, _ in final.named_parameters())


def test_gumbel_param_group_overrides_can_be_left_to_the_stage():
    model = small_cnn()
    method = create_method("nm_gumbel", 0.5, {"lr": None, "weight_decay": None})
    method.attach(model)
    [g] = method.param_groups(model, [])
    assert set(g) == {"params"}


def test_gumbel_magnitude_init_starts_from_the_magnitude_mask():
    ref = small_cnn()
    mag = create_method("nm_magnitude", 0.5)
    mag.attach(ref)
    model = small_cnn()
    method = create_method("nm_gumbel", 0.5, {"init": "magnitude"})
    method.attach(model)
    w = effective_weights(model)
    for n, m in masked_layers(ref).items():
        assert torch.equal(w[n] != 0, getattr(m, MASK)), n


def test_gumbel_on_a_masked_model_keeps_the_masks_and_trains_the_weights():
    model = small_cnn()
    first = create_method("nm_gumbel", 0.5, {"init": "magnitude"})
    first.attach(model)
    train_steps(model, first, steps=2, opt="adamw")
    model = first.finalize(model)
    masks = {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}
    second = create_method("nm_gumbel", 0.5, {"init": "magnitude"})
    second.attach(model)
    assert second.mode == "fixed"
    groups = [{"params": list(model.parameters())}]
    assert second.param_groups(model, groups) is groups
    second.prune(model, 0.5)  # direct use (no prune stage runs nm_gumbel): the learned masks stay
    w0 = {n: m.weight.detach().clone() for n, m in masked_layers(model).items()}
    train_steps(model, second, steps=4)
    for n, m in masked_layers(model).items():
        assert torch.equal(getattr(m, MASK), masks[n])
        assert torch.equal(m.weight != 0, masks[n])
        assert not torch.equal(m.weight, w0[n])
    assert_all_groups_valid(second.finalize(model), second, "im2col")


def test_gumbel_prune_on_a_dense_model_is_an_error():
    model = small_cnn()
    method = create_method("nm_gumbel", 0.5)
    method.attach(model)
    with pytest.raises(ValueError, match="train stage with sparse: true"):
        method.prune(model, 0.5)


@pytest.mark.parametrize("name", METHODS)
def test_resume_order_load_state_then_attach_again(name):
    """fit(): attach -> model.load_state_dict -> method.load_state_dict -> attach again."""
    model = small_cnn()
    method = create_method(name, 0.5)
    method.attach(model)
    opt = train_steps(model, method, steps=3, opt="adamw")
    state, mstate = model.state_dict(), method.state_dict()
    x, _ = data(8, seed=4)
    model.eval()
    with torch.no_grad():
        want = model(x)

    fresh = small_cnn()
    with torch.no_grad():
        fresh[3].weight.copy_(torch.randn_like(fresh[3].weight))  # other input: masks come from the checkpoint
    m2 = create_method(name, 0.5)
    fresh = m2.attach(fresh)
    n_params = len(list(fresh.parameters()))
    groups = m2.param_groups(fresh, [{"params": [p for p in fresh.parameters() if p.requires_grad]}])
    opt2 = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.05)
    fresh.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    m2.load_state_dict(mstate)
    m2.attach(fresh)
    assert len(list(fresh.parameters())) == n_params  # nothing attached twice
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, atol=1e-6, rtol=0)
    train_steps(fresh, m2, steps=2, opt="adamw")
    assert_all_groups_valid(fresh, m2, "im2col")
    other = create_method(name, 0.5, {"group_order": "input_channel"})
    with pytest.raises(ValueError, match="group_order"):
        other.load_state_dict(mstate)


# --- checker and model files ------------------------------------------------------------------

def test_check_nm_detects_planted_violations():
    model = small_cnn()
    method = create_method("nm_magnitude", 0.5)
    method.attach(model)
    assert check_nm(model) == []
    conv = model[3]
    with torch.no_grad():
        i = int(torch.nonzero(~getattr(conv, MASK).flatten())[0])
        conv.weight.view(-1)[i] = 0.5  # a masked-out weight revived: 3 non-zeros in its group
    problems = check_nm(model)
    assert any("3: 1 of" in p and "in weight" in p for p in problems), problems
    assert any("masked-out weights are non-zero" in p for p in problems), problems
    with pytest.raises(NMViolationError, match="not 2:4 along group_order 'im2col'"):
        method.finalize(model)

    model = small_cnn()
    method.attach(model)
    fc = model[8]
    getattr(fc, MASK)[0, :4] = True  # a mask group with 4 kept
    problems = check_nm(model)
    assert any(p.startswith("8: 1 of") and "weight_mask" in p and "output row 0, K offset 0" in p for p in problems)
    # the same masks read along the other order: conv3 (C_in 6) cannot be grouped by input channel
    model = small_cnn()
    create_method("nm_magnitude", 0.5).attach(model)
    assert any("5: masked, but its input_channel group dimension K=6" in p for p in check_nm(model, "input_channel"))


@pytest.mark.parametrize("name", METHODS)
def test_finalized_model_round_trips_through_save_and_load(tmp_path, name):
    from safs.models import create_model
    from safs.model_file import load_model, save_model

    meta = {"name": "lenet5", "activation": "relu", "options": {}, "num_classes": 10, "input_shape": [1, 8, 8]}
    torch.manual_seed(0)
    model = create_model("lenet5", 10, (1, 8, 8), "relu")
    method = create_method(name, 0.5, {"init": "magnitude"} if name == "nm_gumbel" else {})
    model = method.attach(model)
    assert method.layer_names == ["fc1", "fc2", "fc3"] and method.dense_names == ["conv1", "conv2"]
    x = torch.randn(32, 1, 8, 8)
    groups = method.param_groups(model, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    opt = torch.optim.AdamW(groups, lr=0.01)
    for _ in range(3):
        loss = F.cross_entropy(model(x), torch.arange(32) % 10)
        opt.zero_grad()
        loss.backward()
        method.before_step()
        opt.step()
        method.after_step()
    model.eval()
    with torch.no_grad():
        want = model(x)
    final = method.finalize(model)
    save_model(tmp_path / "model.pt", final, meta, name)
    loaded, blob = load_model(tmp_path / "model.pt")
    assert blob["method"] == name
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=0)
    assert check_nm(loaded, "im2col") == []
    assert sorted(masked_layers(loaded)) == ["fc1", "fc2", "fc3"]


# --- real pipelines ---------------------------------------------------------------------------

HEAD = """
name: {name}
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: {method}, target: 0.5{options}}}
resources: {{max_concurrent_trials: 2}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
"""
TAIL = """\
  - {name: search, kind: activation_search, algorithm: random, options: {samples: 2}, epochs_per_candidate: 1}
  - {name: final, kind: train, epochs: 1}
"""
MAGNITUDE_PIPELINE = HEAD.format(name="nm_mag", method="nm_magnitude", options="") + """\
  - {name: prune, kind: prune}
""" + TAIL
# Gumbel learns masks on the frozen dense weights (the paper's AdamW lr 1.0 on the logits).
GUMBEL_STAGE = """\
  - {name: masks, kind: train, epochs: 1, sparse: true, optimizer: {name: adamw, lr: 1.0, weight_decay: 0.0001}}
"""
GUMBEL_PIPELINE = HEAD.format(name="nm_gumbel", method="nm_gumbel", options=", options: {init: magnitude}") \
    + GUMBEL_STAGE + TAIL


def method_follows_sparse_train(yaml_text: str, tmp_path: Path) -> bool:
    from safs.config import parse_pipeline
    from safs.plan import plan

    import yaml

    plans = plan(parse_pipeline(yaml.safe_load(yaml_text)), tmp_path)
    return all(p.spec["sparsity"] is not None for p in plans if p.name in ("search", "final"))


def run_pipeline(tmp_path: Path, text: str, name: str):
    from conftest import kill_ray_leftovers

    from conftest import safs_cmd, subprocess_env

    f = tmp_path / "p.yaml"
    f.write_text(text)
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")  # short: Ray's socket paths have a length limit
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(RAY_TMPDIR=ray_tmp), capture_output=True,
                           text=True, timeout=300)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return {d.name.split("-")[1]: d / "model.pt" for d in (results / name).glob("[0-9][0-9]-*") if d.is_dir()}


def assert_model_file_valid(path: Path, stage: str):
    from safs.model_file import load_model

    model, blob = load_model(path)
    assert check_nm(model, "im2col") == [], stage
    layers = masked_layers(model)
    assert sorted(layers) == ["fc1", "fc2", "fc3"], stage
    for name, m in layers.items():
        assert max_nnz_per_group(m.weight, "im2col") <= 2, (stage, name)
        assert int(getattr(m, MASK).sum()) == m.weight.numel() // 2, (stage, name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pipeline_nm_magnitude_prune_search_train(tmp_path):
    models = run_pipeline(tmp_path, MAGNITUDE_PIPELINE, "nm_mag")
    for stage in ("prune", "search", "final"):
        assert_model_file_valid(models[stage], stage)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pipeline_nm_gumbel_learn_search_train(tmp_path):
    # No prune stage (nm_gumbel is a during-training method): the stages after the sparse
    # train stage run the method, so they keep the learned masks fixed.
    assert method_follows_sparse_train(GUMBEL_PIPELINE, tmp_path)
    models = run_pipeline(tmp_path, GUMBEL_PIPELINE, "nm_gumbel")
    for stage in ("masks", "search", "final"):
        assert_model_file_valid(models[stage], stage)
