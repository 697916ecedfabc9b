"""SAS (1:2 structured activation sparsification): conversion, MACs, training, finalize and
model.pt round trip, the activation-slot rule, and one real pipeline with an activation search."""

import copy
import shutil
import subprocess
import tempfile

import pytest
import torch
from torch import nn

from safs.activations import apply_genome, genome, slots
from safs.models import create_model, prunable_layers
from safs.sparsity import create_method
from safs.sparsity.sas import SAS_LAYERS, architecture, is_converted, plan, sign_split
from safs.training.measure import measure

SMALL = (1, 8, 8)
MODELS = [("lenet5", {}), ("vgg11", {}), ("resnet18", {}), ("resnet18", {"safs_shortcut": True}),
          ("resnet18", {"stem": "imagenet"})]
IDS = ["lenet5", "vgg11", "resnet18", "resnet18-safs", "resnet18-imagenet-stem"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def build(name, options=None, shape=SMALL, activation=None):
    torch.manual_seed(0)
    return create_model(name, 10, shape, activation, **(options or {}))


def sas_of(model):
    out = copy.deepcopy(model)
    assert create_method("sas", 0.0).attach(out) is out
    return out


def test_sign_split_interleaves_positive_and_negative_parts():
    x = torch.tensor([[1.5, -2.0, 0.0]])
    assert sign_split(x).tolist() == [[1.5, 0.0, 0.0, 2.0, 0.0, 0.0]]
    x4 = torch.randn(2, 3, 4, 5)
    out = sign_split(x4)
    assert out.shape == (2, 6, 4, 5)
    assert torch.equal(out[:, 0::2], x4.relu()) and torch.equal(out[:, 1::2], (-x4).relu())
    cl = sign_split(x4.contiguous(memory_format=torch.channels_last))
    assert torch.equal(cl, out)
    # the reference gradient: 1[x>0] on the positive slot, -1[x<0] on the negative one
    x.requires_grad_(True)
    sign_split(x).sum().backward()
    assert x.grad.tolist() == [[1.0, -1.0, 0.0]]


@pytest.mark.parametrize("name,options", MODELS, ids=IDS)
def test_conversion_preserves_the_function_and_doubles_converted_inputs(name, options):
    dense = build(name, options)
    sas = sas_of(dense)
    p = plan(dense)
    x = torch.randn(4, *SMALL)
    # BN with running statistics, then with batch statistics (which amplify float rounding:
    # a batch of 4 over 1x1 maps has tiny variances)
    for mode, tol in (("eval", {"atol": 1e-5}), ("train", {"atol": 1e-4, "rtol": 1e-3})):
        getattr(dense, mode)(), getattr(sas, mode)()
        with torch.no_grad():
            assert torch.allclose(sas(x), dense(x), **tol), mode
    before, after = prunable_layers(dense), prunable_layers(sas)
    assert set(before) == set(after)  # names stay stable
    first = next(iter(before))
    assert type(after[first]) is nn.Conv2d  # the first conv reads the image: not converted
    for layer, negative in p.layers.items():
        w, wide = before[layer].weight, after[layer].weight
        assert isinstance(after[layer], SAS_LAYERS)
        assert wide.shape[1] == 2 * w.shape[1] and wide.shape[0] == w.shape[0]
        assert torch.equal(wide[:, 0::2], w)  # W+ = W
        assert torch.equal(wide[:, 1::2], torch.zeros_like(w) if negative == "zero" else -w)
    assert set(after) - set(p.layers) == {first}
    g = genome(sas)
    assert all(g[s] == "identity" for s in p.relocated)  # the split replaces these ReLUs


def test_channels_last_model_as_the_stages_prepare_it():
    from safs.stages.common import prepare_for_device

    dense = prepare_for_device(build("vgg11"), torch.device("cpu")).eval()
    sas = sas_of(dense)
    conv = sas.features.conv2
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, *SMALL).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(sas(x), dense(x), atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert sas(x).shape == (2, 10)


def test_which_layers_get_which_initialisation():
    std, safs = plan(build("resnet18")), plan(build("resnet18", {"safs_shortcut": True}))
    assert set(std.layers.values()) == {"zero"}  # every input is a relocated ReLU (§6.2)
    assert std.shortcut_relus == ["layer1.0.shortcut", "layer1.1.shortcut", "layer2.1.shortcut",
                                  "layer3.1.shortcut", "layer4.1.shortcut"]
    # SAFS blocks: no activation after the addition, so later blocks read a linear input
    assert safs.layers["layer1.0.conv1"] == "zero" and safs.layers["layer1.1.conv1"] == "negate"
    assert safs.layers["layer2.0.shortcut.conv"] == "negate" and safs.layers["classifier"] == "negate"
    assert safs.shortcut_relus == ["layer1.0.shortcut"]  # in front of shortcut.act (the stem's ReLU)
    assert "layer1.0.shortcut.act" not in safs.relocated
    assert plan(build("lenet5")).relocated == ["act1", "act2", "act3", "act4"]


def test_average_pool_before_the_classifier_is_the_documented_exception():
    """Standard ResNet-18 with a 2x2 last map: the features are preserved exactly, but the
    classifier reads P(avgpool(z)) instead of avgpool(relu(z))."""
    shape = (3, 16, 16)
    dense = build("resnet18", shape=shape).eval()
    sas = sas_of(dense).eval()
    seen = {}
    dense.pool.register_forward_hook(lambda m, i, o: seen.__setitem__("dense", i[0]))
    sas.pool.register_forward_hook(lambda m, i, o: seen.__setitem__("sas", i[0]))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        a, b = dense(x), sas(x)
    assert torch.allclose(seen["sas"].relu(), seen["dense"], atol=1e-5)  # the ReLU moved past the pool
    assert not torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name,options,shape", [("lenet5", {}, (1, 28, 28))]
                         + [(n, o, SMALL) for n, o in MODELS], ids=["lenet5-28"] + IDS)
def test_sparse_macs_equal_the_unconverted_model_and_converted_layers_double(name, options, shape):
    dense = build(name, options, shape)
    sas = sas_of(dense)
    d, s = measure(dense, shape), measure(sas, shape)
    converted = set(plan(dense).layers)
    assert s.nnz_macs == d.macs  # the activation-aware count: the original model's MACs
    for layer, row in s.per_layer.items():
        k = 2 if layer in converted else 1
        assert row["params"] == k * d.per_layer[layer]["params"], layer
        assert row["macs"] == k * d.per_layer[layer]["macs"], layer  # dense hardware: 2x wide
        assert row["nnz_macs"] == d.per_layer[layer]["macs"], layer
        assert row["activation_density"] == (0.5 if layer in converted else 1.0)
    extra = sum(d.per_layer[layer]["params"] for layer in converted)
    assert s.weights == d.weights + extra and s.params == d.params + extra  # biases unchanged
    assert s.macs == d.macs + sum(d.per_layer[layer]["macs"] for layer in converted)
    if name == "lenet5" and shape == (1, 28, 28):
        assert d.macs == 6 * 24 * 24 * 25 + 16 * 8 * 8 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    # W- = 0 right after the conversion is not weight sparsity of the method
    assert s.nnz < s.weights and s.nnz_macs == d.macs


def test_each_input_pair_has_at_most_one_nonzero_whatever_the_slot_operator():
    model = sas_of(build("lenet5")).eval()
    seen = []
    for m in model.modules():
        if isinstance(m, SAS_LAYERS):
            m.register_forward_hook(lambda mod, i, o: seen.append(sign_split(i[0])))
    x = torch.randn(8, *SMALL)
    before = measure(model, SMALL)
    # what an activation search may do to the relocated slots: the split still applies
    apply_genome(model, {"act1": "tanh", "act2": "leaky_relu", "act3": "elu", "act4": "relu6"})
    for _ in range(2):
        seen.clear()
        with torch.no_grad():
            model(x)
        assert len(seen) == 4
        for p in seen:
            pos, neg = p[:, 0::2], p[:, 1::2]
            assert torch.all(pos * neg == 0)
            assert torch.count_nonzero(p) <= p.numel() // 2
        apply_genome(model, {s: "identity" for s in slots(model)})
    after = measure(model, SMALL)
    assert (after.macs, after.nnz_macs, after.params) == (before.macs, before.nnz_macs, before.params)


def test_converted_network_trains_and_negative_weights_learn():
    model = build("lenet5")
    method = create_method("sas", 0.5)
    method.attach(model)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    x, y = torch.randn(32, *SMALL), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        optim.zero_grad()
        loss.backward()
        method.before_step()
        optim.step()
        method.after_step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for name in ("conv2", "fc1", "fc2", "fc3"):
        assert torch.count_nonzero(getattr(model, name).weight[:, 1::2]) > 0, name  # W- no longer 0


@pytest.mark.parametrize("name,options", [("lenet5", {}), ("resnet18", {"safs_shortcut": True})],
                         ids=["lenet5", "resnet18-safs"])
def test_finalize_and_model_file_round_trip_weights_only(tmp_path, name, options):
    from safs.model_file import load_model, save_model

    model = build(name, options)
    method = create_method("sas", 0.0)
    method.attach(model)
    with torch.no_grad():  # stands in for training: the negative halves are no longer zero
        for m in model.modules():
            if isinstance(m, SAS_LAYERS):
                m.weight[:, 1::2] = torch.randn_like(m.weight[:, 1::2]) * 0.05
    relocated = plan(model).relocated
    apply_genome(model, {relocated[0]: "tanh", relocated[-1]: "acon"})  # an activation search ran
    model.eval()
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        before = model(x)
        final = method.finalize(model).eval()
        assert torch.allclose(final(x), before, atol=1e-5)
    # standard modules or their split-input subclasses, holding only weight and bias
    assert all(type(m) in (nn.Conv2d, nn.Linear, *SAS_LAYERS) for m in prunable_layers(final).values())
    assert {k.rsplit(".", 1)[1] for n, m in final.named_modules() if isinstance(m, SAS_LAYERS)
            for k in m.state_dict(prefix=n + ".")} <= {"weight", "bias"}

    meta = {"name": name, "activation": "relu", "options": options, "num_classes": 10, "input_shape": list(SMALL)}
    path = tmp_path / "model.pt"
    save_model(path, final, meta, None)  # an activation search stage saves without the method
    blob = torch.load(path, weights_only=True)
    assert blob["architecture"] == architecture(final)
    assert blob["architecture"]["layers"] == [n for n, m in final.named_modules() if isinstance(m, SAS_LAYERS)]
    loaded, _ = load_model(path)
    loaded.eval()
    assert is_converted(loaded) and genome(loaded) == genome(final)
    with torch.no_grad():
        assert torch.allclose(loaded(x), before, atol=1e-5)
    assert measure(loaded, SMALL).as_dict() == measure(final, SMALL).as_dict()
    # a later stage attaches the method again: nothing is converted twice
    state = {k: v.clone() for k, v in loaded.state_dict().items()}
    create_method("sas", 0.0).attach(loaded)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_unconverted_model_files_are_unchanged(tmp_path):
    from safs.model_file import load_model, save_model

    model = build("lenet5").eval()
    meta = {"name": "lenet5", "activation": "relu", "options": {}, "num_classes": 10, "input_shape": list(SMALL)}
    save_model(tmp_path / "m.pt", model, meta, None)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["architecture"] is None
    del blob["architecture"]  # a file written before the field existed
    torch.save(blob, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    assert not is_converted(loaded)


def test_model_files_replay_a_transform_through_the_method_it_names():
    from safs.sparsity import architecture as recorded, method_class, rebuild

    assert method_class("lwm").architecture(build("lenet5")) is None and recorded(build("lenet5")) is None
    with pytest.raises(ValueError, match="unknown architecture transform 'lwm'.*'sas'"):
        rebuild(build("lenet5"), {"transform": "lwm", "version": 1})
    with pytest.raises(ValueError, match="unknown architecture transform 'sas' .version 9"):
        rebuild(build("lenet5"), {"transform": "sas", "version": 9})


def test_unsupported_models_and_activations_fail_clearly_at_attach():
    with pytest.raises(ValueError, match=r"EfficientNetB0.*supported models: lenet5, vgg11, vgg16, resnet18"):
        create_method("sas", 0.0).attach(build("efficientnet_b0", shape=(3, 8, 8)))
    with pytest.raises(ValueError, match=r"supported models"):
        create_method("sas", 0.0).attach(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)))
    tanh = build("lenet5", activation="tanh")
    with pytest.raises(ValueError, match=r"slot 'act1' holds 'tanh'.*ReLU networks only"):
        create_method("sas", 0.0).attach(tanh)
    assert not is_converted(tanh)  # checked before anything changed
    pruned = build("lenet5")
    lwm = create_method("lwm", 0.5)
    lwm.attach(pruned)
    lwm.prune(pruned)
    with pytest.raises(ValueError, match=r"weight mask"):
        create_method("sas", 0.0).attach(pruned)
    with pytest.raises(ValueError, match=r"sparsity.options"):
        create_method("sas", 0.0, {"m": 4})


# --- one real pipeline ---------------------------------------------------------------------------

SPACE = """\
# Candidates for the slots SAS relocated: the split follows whatever they compute
conditions: []
forbiddens: []
format_version: 0.4
hyperparameters:
- choices: [identity, leaky_relu, tanh]
  default_value: identity
  meta: null
  name: operator
  type: categorical
  weights: null
name: sas_space
python_module_version: 1.2.0
"""

PIPELINE = """
name: sas
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: sas, target: 0.0}}
resources: {{max_concurrent_trials: 2}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
  - {{name: sas, kind: train, epochs: 1, sparse: true}}
  - {{name: search, kind: activation_search, algorithm: random, options: {{samples: 2}},
      epochs_per_candidate: 1, space: {space}}}
  - {{name: final, kind: train, epochs: 1}}
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pipeline_dense_sas_search_final_on_digits(tmp_path):
    import pandas as pd
    from conftest import safs_cmd, subprocess_env
    from conftest import by_stage, kill_ray_leftovers, records

    from safs.model_file import load_model

    (tmp_path / "space.yaml").write_text(SPACE)
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(space=tmp_path / "space.yaml"))
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(RAY_TMPDIR=ray_tmp),
                           capture_output=True, text=True, timeout=280)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(results / "sas")
    dense, sas = by_stage(recs, "dense")["measurement"], by_stage(recs, "sas")["measurement"]
    assert sas["nnz_macs"] == dense["macs"] and sas["macs"] > dense["macs"] and sas["params"] > dense["params"]
    for name in ("search", "final"):  # stages without the method keep the architecture
        rec = by_stage(recs, name)
        assert rec["measurement"]["nnz_macs"] == dense["macs"]
        assert rec["measurement"]["params"] == sas["params"]
        assert set(rec["genome"].values()) <= {"identity", "leaky_relu", "tanh"}
    [search_dir] = [d for d in (results / "sas").iterdir() if d.name.startswith("03-search-")]
    assert len(pd.read_parquet(search_dir / "trials.parquet")) == 2
    [final_dir] = [d for d in (results / "sas").iterdir() if d.name.startswith("04-final-")]
    model, blob = load_model(final_dir / "model.pt")
    assert is_converted(model) and blob["architecture"]["transform"] == "sas"
