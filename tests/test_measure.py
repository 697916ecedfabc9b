"""The one measurement: per-layer figures that sum to the totals, both sparsity denominators,
dense MACs from the flop counter, sparse MACs that scale with (weight x activation) density."""

import json

import pytest
import torch

from safs.models import create_model
from safs.sparsity import create_method
from safs.sparsity.masks import MASK
from safs.training.measure import measure

LENET_28 = {"conv1": 6 * 24 * 24 * 25, "conv2": 16 * 8 * 8 * 150, "fc1": 256 * 120, "fc2": 120 * 84, "fc3": 84 * 10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def lenet(shape=(1, 28, 28)):
    torch.manual_seed(0)
    return create_model("lenet5", 10, shape)


def lwm(model, rate):
    method = create_method("lwm", rate)
    method.attach(model)
    method.prune(model)
    return method.finalize(model)


def test_dense_macs_of_lenet5_are_the_hand_computed_ones():
    m = measure(lenet(), (1, 28, 28))
    assert {k: v["macs"] for k, v in m.per_layer.items()} == LENET_28
    assert m.macs == sum(LENET_28.values()) == 281_640
    assert m.nnz_macs == m.macs  # dense
    assert m.sparsity == m.sparsity_all_weights == m.sparsity_prunable == 0.0
    assert m.prunable_weights == m.weights  # no mask anywhere: every conv/linear is prunable


@pytest.mark.parametrize("kind", ["lwm", "sas"])
def test_per_layer_figures_sum_to_the_totals(kind):
    model = lenet()
    if kind == "lwm":
        model = lwm(model, 0.7)
    else:
        create_method("sas", 0.0).attach(model)
    m = measure(model, (1, 28, 28))
    rows = m.per_layer.values()
    assert sum(r["params"] for r in rows) == m.weights
    assert sum(r["nnz"] for r in rows) == m.nnz
    assert sum(r["macs"] for r in rows) == m.macs
    assert sum(r["nnz_macs"] for r in rows) == m.nnz_macs
    assert sum(r["params"] for r in rows if r["prunable"]) == m.prunable_weights
    assert sum(r["nnz"] for r in rows if r["prunable"]) == m.prunable_nnz
    assert m.sparsity == pytest.approx(1 - m.nnz / m.weights)
    for name, r in m.per_layer.items():  # the legacy per-layer view agrees
        assert m.layers[name] == {"numel": r["params"], "nnz": r["nnz"], "sparsity": r["sparsity"], "macs": r["macs"]}
    assert m.params == sum(p.numel() for p in model.parameters())
    assert json.loads(json.dumps(m.as_dict())) == m.as_dict()  # stage.json stores it as is


def test_lwm_lenet5_at_0_9_over_prunable_layers_and_over_all_weights():
    model = lwm(lenet(), 0.9)
    m = measure(model, (1, 28, 28))
    # LWM prunes every conv and linear layer, so both denominators are the same 44,190 weights
    assert m.weights == m.prunable_weights == 150 + 2400 + 30720 + 10080 + 840
    assert m.sparsity_prunable == pytest.approx(0.9, abs=1e-12)
    assert m.sparsity_all_weights == m.sparsity == pytest.approx(0.9, abs=1e-12)
    assert m.sparsity_masked == m.sparsity_prunable
    biases = 6 + 16 + 120 + 84 + 10
    slot_scales = 2 * 4  # alpha, beta of the 4 slots
    assert m.params == m.weights + biases + slot_scales
    assert m.sparsity_all_params == pytest.approx(0.9 * m.weights / m.params)

    # A method that leaves the first conv dense (no mask on it): the denominators now differ
    conv1 = model.conv1
    del conv1._buffers[MASK]
    with torch.no_grad():
        conv1.weight.normal_()
    m = measure(model, (1, 28, 28))
    assert m.prunable_weights == m.weights - 150
    assert m.sparsity_prunable == pytest.approx(0.9, abs=1e-12)
    assert m.sparsity_all_weights == pytest.approx(0.9 * (m.weights - 150) / m.weights, abs=1e-12)
    assert not m.per_layer["conv1"]["prunable"] and m.per_layer["conv1"]["sparsity"] == 0.0


@pytest.mark.parametrize("rate", [0.5, 0.9])
def test_sparse_macs_scale_with_density(rate):
    m = measure(lwm(lenet(), rate), (1, 28, 28))
    for name, r in m.per_layer.items():
        density = r["nnz"] / r["params"]
        assert density == pytest.approx(1 - rate, abs=1e-12)
        assert r["nnz_macs"] == round(LENET_28[name] * density)
        assert r["macs"] == LENET_28[name]  # dense MACs do not depend on the mask
    assert m.nnz_macs == pytest.approx((1 - rate) * m.macs, abs=len(LENET_28))


def test_activation_density_scales_sparse_macs():
    """A layer declaring structurally sparse inputs (SAS) is counted at density x MACs."""
    model = lenet()
    model.fc1.activation_density = 0.25
    m = measure(model, (1, 28, 28))
    assert m.per_layer["fc1"]["nnz_macs"] == LENET_28["fc1"] // 4
    assert m.per_layer["fc1"]["activation_density"] == 0.25
    assert m.nnz_macs == sum(LENET_28.values()) - LENET_28["fc1"] * 3 // 4
