"""The plugin interface and LWM: exact per-layer sparsity, masks that survive training."""

import pytest
import torch
from torch import nn

from safs.sparsity import create_method, list_methods
from safs.sparsity.base import magnitude_mask, prunable_layers
from safs.sparsity.masks import MASK, ensure_mask_buffers, masked_layers
from safs.training.measure import measure


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def test_registry_lists_lwm_and_rejects_unknown_options():
    assert "lwm" in list_methods()
    with pytest.raises(ValueError, match="sparsity.options"):
        create_method("lwm", 0.5, {"bogus": 1})
    with pytest.raises(ValueError, match="accepted: .*lwm"):
        create_method("nope", 0.5)


def test_magnitude_mask_removes_exactly_the_smallest():
    w = torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.05, 0.2]])
    m = magnitude_mask(w, 0.5)
    assert m.tolist() == [[True, False, True], [True, False, False]]


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_lwm_exact_per_layer_sparsity_first_and_last_included(rate):
    model = small_cnn()
    method = create_method("lwm", rate)
    method.attach(model)
    method.prune(model)
    layers = prunable_layers(model)
    assert set(masked_layers(model)) == set(layers)  # first conv and classifier too
    for name, mod in layers.items():
        n = mod.weight.numel()
        assert int((mod.weight == 0).sum()) == round(rate * n), name
        assert int((~getattr(mod, MASK)).sum()) == round(rate * n)
        # the kept weights are the largest in magnitude
        kept = mod.weight[getattr(mod, MASK)].abs()
        assert mod.bias is None or torch.count_nonzero(mod.bias) == mod.bias.numel()  # biases untouched
        assert kept.numel() == n - round(rate * n)
    m = measure(model, (1, 8, 8))
    assert m.sparsity_masked == pytest.approx(sum(round(rate * l.weight.numel()) for l in layers.values()) / m.weights)


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_masks_survive_many_steps_with_momentum_and_weight_decay(opt):
    model = small_cnn()
    method = create_method("lwm", 0.9)
    method.attach(model)
    method.prune(model)
    zeros = {n: (m.weight == 0).clone() for n, m in prunable_layers(model).items()}
    method.attach(model)
    params = model.parameters()
    optim = {"sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-2, nesterov=True),
             "adam": lambda: torch.optim.Adam(params, lr=0.05, weight_decay=5e-2),
             "adamw": lambda: torch.optim.AdamW(params, lr=0.05, weight_decay=5e-2)}[opt]()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(x), y)
        optim.zero_grad()
        loss.backward()
        method.before_step()
        optim.step()
        method.after_step()
    for n, m in prunable_layers(model).items():
        assert torch.all(m.weight[zeros[n]] == 0), n  # exactly zero, not just small
        assert torch.count_nonzero(m.weight[~zeros[n]]) > 0


def test_pruned_model_round_trips_weights_only(tmp_path):
    model = small_cnn()
    method = create_method("lwm", 0.8)
    method.attach(model)
    method.prune(model)
    model = method.finalize(model).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    sd = torch.load(tmp_path / "m.pt", weights_only=True)
    fresh = small_cnn()
    ensure_mask_buffers(fresh, sd)
    fresh.load_state_dict(sd)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(fresh.eval()(x), model(x), atol=1e-6)
    assert all(torch.equal(getattr(a, MASK), getattr(b, MASK))
               for a, b in zip(masked_layers(fresh).values(), masked_layers(model).values()))


def test_iterative_pruning_never_revives():
    model = small_cnn()
    method = create_method("lwm", 0.5)
    method.attach(model)
    method.prune(model)
    first = {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}
    with torch.no_grad():  # make pruned positions the largest if they could come back
        for m in masked_layers(model).values():
            m.weight.add_(~getattr(m, MASK) * 100.0)
    method.prune(model, 0.8)
    for n, m in masked_layers(model).items():
        assert not torch.any(getattr(m, MASK) & ~first[n])
