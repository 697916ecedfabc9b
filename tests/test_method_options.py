"""What every sparse method shares: its protocol (the same as the registry's), the one rule
that counts pruned weights (torch.nn.utils.prune's), a model that arrives already sparse in a
during-training method, and the options ``layer_targets`` and ``exclude``."""

import copy
import io
import typing

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from conftest import lenet, method_sgd, method_step, random_batches, train_with_method
from safs.models import create_model, prunable_layers
from safs.sparsity import PROTOCOLS, create_method, list_methods, method_class, method_protocol
from safs.sparsity.base import Protocol, magnitude_mask, pruned_count
from safs.sparsity.masks import MASK, masked_layers
from safs.training.measure import measure

SHAPE = (1, 28, 28)
DURING_TRAINING = [n for n in list_methods() if method_protocol(n) == "during_training"]
# A method's options for a short stage: the schedules end within it.
SHORT = {"gmp": {"start": 0.0, "end": 0.5, "frequency": 1}, "st3": {"start": 0.0, "end": 0.5},
         "st3_sigma": {"start": 0.0, "end": 0.5}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def batches(n=6, size=8, seed=1):
    return random_batches(n, size, seed)


def optimizer(model, method):
    return method_sgd(model, method, weight_decay=5e-2)


def train(model, method, data, epochs=2, opt=None, on_step=None):
    return train_with_method(model, method, data, epochs, opt or optimizer(model, method), on_step)


def used_weights(model) -> dict[str, torch.Tensor]:
    """The weight each conv/linear layer computes with (attached or plain)."""
    with torch.no_grad():
        return {n: (m.effective_weight() if hasattr(m, "effective_weight") else m.weight).detach().clone()
                for n, m in prunable_layers(model).items()}


def masks_of(model) -> dict[str, torch.Tensor]:
    return {n: getattr(m, MASK).clone() for n, m in masked_layers(model).items()}


# --------------------------------------------------------------------------- protocol

def test_every_class_declares_the_registry_protocol():
    assert typing.get_args(Protocol) == PROTOCOLS
    for name in list_methods():
        cls = method_class(name)
        assert getattr(cls, "protocol", None) == method_protocol(name), name
        assert cls.protocol in PROTOCOLS


# --------------------------------------------------------------------------- already sparse input

def sparse_input(name):
    """A finalized model with zeros in its masks, as an earlier sparse stage leaves it (2:4 for
    the N:M methods, whose fixed mode checks the pattern)."""
    model = lenet()
    if name.startswith("nm_"):
        first = create_method("nm_magnitude", 0.5)
        first.attach(model)
    else:
        first = create_method("lwm", 0.7)
        first.attach(model)
        first.prune(model)
    return first.finalize(model)


def later_method(name):
    # A target other than the input's: a schedule that still ran would change the masks.
    return create_method(name, 0.5 if name.startswith("nm_") else 0.9, SHORT.get(name, {}))


@pytest.mark.parametrize("name", DURING_TRAINING)
def test_a_model_that_arrives_sparse_is_fine_tuned_with_its_masks_fixed(name):
    model = sparse_input(name)
    masks, sparsity = masks_of(model), measure(model, SHAPE).sparsity
    before = used_weights(model)
    method = later_method(name)
    model = method.attach(model)

    def check():  # after every step: the same masks, the masked weights exactly zero
        assert masks_of(model).keys() == masks.keys()
        for n, w in used_weights(model).items():
            if n in masks:
                assert torch.equal(getattr(prunable_layers(model)[n], MASK), masks[n]), n
                assert torch.all(w[~masks[n]] == 0), n

    train(model, method, batches(), epochs=3, on_step=check)
    after = used_weights(model)
    assert any(not torch.equal(after[n], before[n]) for n in masks)  # it did fine-tune
    final = method.finalize(model)
    assert measure(final, SHAPE).sparsity == sparsity
    assert {n: torch.equal(m, masks[n]) for n, m in masks_of(final).items()} == {n: True for n in masks}


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", DURING_TRAINING)
def test_resuming_a_fixed_mask_stage_gives_the_uninterrupted_run(name):
    """The order of ``safs.stages.train.fit`` on resume: attach the stage's input, build the
    optimizer, load model and optimizer state, method.load_state_dict, attach again."""
    data, spe, epochs, stop = batches(), 6, 2, 7

    def start():
        method = later_method(name)
        model = method.attach(sparse_input(name))
        return model, method, optimizer(model, method)

    model, method, opt = start()
    train(model, method, data, epochs, opt)
    reference = used_weights(model)

    model, method, opt = start()
    method.on_train_start(spe, epochs, 0)
    for t in range(stop):
        method_step(model, method, opt, *data[t % spe])
    saved = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict()})

    model, method, opt = start()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    method.load_state_dict(saved["method"])
    model = method.attach(model)
    method.on_train_start(spe, epochs, stop // spe)
    for t in range(stop, spe * epochs):
        method_step(model, method, opt, *data[t % spe])
    for n, w in used_weights(model).items():
        assert torch.allclose(w, reference[n], atol=1e-6), n


# --------------------------------------------------------------------------- the pruned count

def test_pruned_count_rounds_and_float_noise_costs_no_weight():
    assert int(0.7 * 90) == 62 and pruned_count(0.7, 90) == 63
    assert pruned_count(0.999, 150) == 150 and pruned_count(0.9, 840) == 756
    w = torch.arange(1.0, 91.0).view(9, 10)
    assert int((~magnitude_mask(w, 0.7)).sum()) == 63


REAL_MODELS = [("lenet5", {}, (1, 28, 28), None),
               ("vgg11", {"width": 0.25}, (3, 32, 32), None),
               # a few layers of each kind: the stem, a 3x3 conv of each width, a 1x1 shortcut, the classifier
               ("resnet18", {}, (3, 32, 32), ["stem.conv", "layer1.0.conv1", "layer2.0.shortcut.conv",
                                              "layer3.1.conv2", "layer4.1.conv2", "classifier"])]


@pytest.mark.parametrize("model_name, options, shape, names", REAL_MODELS, ids=[m[0] for m in REAL_MODELS])
def test_lwm_masks_are_those_of_torch_l1_unstructured(model_name, options, shape, names):
    torch.manual_seed(0)
    model = create_model(model_name, 10, shape, **options)
    layers = {n: m for n, m in prunable_layers(model).items() if names is None or n in names}
    exclude = [n for n in prunable_layers(model) if n not in layers]
    for rate in (0.5, 0.7, 0.9, 0.95, 0.99, 0.999):
        ours = copy.deepcopy(model)
        method = create_method("lwm", rate, {"exclude": exclude} if exclude else {})
        method.attach(ours)
        method.prune(ours)
        theirs = {n: copy.deepcopy(m) for n, m in layers.items()}
        for n, m in theirs.items():
            torch_prune.l1_unstructured(m, "weight", amount=rate)
        ties = 0
        for n, m in masked_layers(ours).items():
            mine, ref = getattr(m, MASK), theirs[n].weight_mask.bool()
            assert int((~mine).sum()) == int((~ref).sum()), (rate, n)  # the same count, always
            differ = mine != ref
            if differ.any():
                # Only where magnitudes tie at the cutoff may the two sorts pick different
                # entries (their tie orders differ): the same values are pruned either way.
                a = layers[n].weight.detach().abs()
                assert torch.all(a[differ] == a[~mine].max()), (rate, n)
                ties += 1
        assert ties <= len(layers) // 3, rate  # in all but a few layers: the very same mask


# --------------------------------------------------------------------------- layer_targets

LAYER_TARGETS = {"conv1": 0.3, "fc1": 0.95, "fc3": 0.5}
UNIFORM = 0.8


def expected_counts(model) -> dict[str, int]:
    return {n: round(LAYER_TARGETS.get(n, UNIFORM) * m.weight.numel()) for n, m in prunable_layers(model).items()}


def zero_counts(weights: dict[str, torch.Tensor]) -> dict[str, int]:
    return {n: int((w == 0).sum()) for n, w in weights.items()}


def test_lwm_layer_targets_give_each_layer_its_own_sparsity():
    model = lenet()
    method = create_method("lwm", UNIFORM, {"layer_targets": LAYER_TARGETS})
    method.attach(model)
    method.prune(model)
    assert zero_counts(used_weights(method.finalize(model))) == expected_counts(model)


def test_gmp_layer_targets_end_each_layer_schedule_at_its_target():
    model = lenet()
    method = create_method("gmp", UNIFORM, {"layer_targets": LAYER_TARGETS, "start": 0.0, "end": 0.5,
                                            "frequency": 2})
    model = method.attach(model)
    numel = {n: m.weight.numel() for n, m in prunable_layers(model).items()}

    def check():  # each layer on its own cubic schedule, from 0 to its own target
        t0, dt, n = method._plan()
        remaining = (1 - min(n, max(0, method.step - t0) // dt) / n) ** 3
        for name, m in masked_layers(model).items():
            final = LAYER_TARGETS.get(name, UNIFORM)
            s = final + (0.0 - final) * remaining
            assert int((~getattr(m, MASK)).sum()) == round(s * numel[name]), (method.step, name)

    train(model, method, batches(), epochs=2, on_step=check)
    assert zero_counts(used_weights(method.finalize(model))) == expected_counts(model)


def test_dnw_layer_targets_set_each_layer_top_k():
    model = lenet()
    method = create_method("dnw", UNIFORM, {"layer_targets": LAYER_TARGETS})
    model = method.attach(model)
    assert zero_counts(used_weights(model)) == expected_counts(model)
    train(model, method, batches(), epochs=1)
    assert zero_counts(used_weights(model)) == expected_counts(model)
    assert zero_counts(used_weights(method.finalize(model))) == expected_counts(model)


@pytest.mark.parametrize("name", ["lwm", "gmp", "dnw"])
def test_layer_targets_naming_unknown_layers_is_one_line(name):
    method = create_method(name, UNIFORM, {"layer_targets": {"conv9": 0.5, "fc1": 0.5, "blocks.0.x": 0.1}})
    with pytest.raises(ValueError, match=rf"sparsity\.options\.layer_targets: unknown layer\(s\) blocks\.0\.x, conv9 "
                                         rf"for method '{name}'") as e:  # fc1 is known: not listed
        method.attach(lenet())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", [{"fc1": 1.0}, {"fc1": -0.1}, {"fc1": "0.5"}, {"fc1": True}, [0.5]])
def test_layer_targets_values_must_be_sparsities(value):
    with pytest.raises(ValueError, match=r"sparsity\.options\.layer_targets"):
        create_method("lwm", UNIFORM, {"layer_targets": value})


def test_layer_targets_is_not_an_option_of_the_global_and_learned_methods():
    for name in ("st3", "nm_magnitude", "sas"):
        with pytest.raises(ValueError, match="sparsity.options: unknown option"):
            create_method(name, 0.5, {"layer_targets": {"fc1": 0.5}})


# --------------------------------------------------------------------------- exclude

EFFICIENTNET_EXCLUDE = ["blocks.*.se.fc2", "blocks.*.shortcut.conv"]


def test_lwm_exclude_keeps_efficientnet_se_fc2_and_shortcut_convs_dense():
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", 10, (3, 16, 16))
    dense = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    excluded = sorted(n for n in dense if n.endswith((".se.fc2", ".shortcut.conv")))
    assert len(excluded) == 16 + 2  # one SE per block; shortcut convs where channels change at stride 1
    method = create_method("lwm", 0.9, {"exclude": EFFICIENTNET_EXCLUDE})
    method.attach(model)
    method.prune(model)
    final = method.finalize(model)
    layers = prunable_layers(final)
    assert sorted(set(layers) - set(masked_layers(final))) == excluded
    for n in excluded:
        assert torch.equal(layers[n].weight, dense[n]), n  # every weight kept
    m = measure(final, (3, 16, 16))
    assert not any(m.per_layer[n]["prunable"] for n in excluded)
    assert m.prunable_weights == m.weights - sum(dense[n].numel() for n in excluded)
    assert m.sparsity_prunable == pytest.approx(0.9, abs=1e-4)


@pytest.mark.parametrize("name", ["lwm", "gmp", "dnw", "st3", "st3_sigma", "nm_magnitude"])
def test_excluded_layers_stay_dense_and_unmasked(name):
    model = lenet()
    dense = model.fc3.weight.detach().clone()
    method = create_method(name, 0.5 if name.startswith("nm_") else 0.8, {**SHORT.get(name, {}), "exclude": ["fc3"]})
    model = method.attach(model)
    if method_protocol(name) == "one_shot":
        method.prune(model)
    else:
        train(model, method, batches(), epochs=2)
    final = method.finalize(model)
    assert "fc3" not in masked_layers(final) and "fc3" not in method.layers(final)
    assert torch.count_nonzero(final.fc3.weight) == dense.numel()
    assert measure(final, SHAPE).sparsity_prunable > 0.4  # the other layers are sparse


def test_an_exclude_pattern_that_matches_nothing_is_an_error():
    method = create_method("lwm", 0.5, {"exclude": ["fc3", "classifer"]})
    with pytest.raises(ValueError, match=r"sparsity\.options\.exclude: pattern\(s\) classifer match no"):
        method.attach(lenet())
    with pytest.raises(ValueError, match=r"sparsity\.options\.exclude: .* must be a list"):
        create_method("lwm", 0.5, {"exclude": "fc3"})


@pytest.mark.parametrize("name", list_methods())
def test_an_unknown_option_is_refused_naming_the_options_the_method_takes(name):
    import inspect

    params = inspect.signature(method_class(name).__init__).parameters.values()
    takes = sorted(p.name for p in params if p.name not in ("self", "target") and p.kind is not p.VAR_KEYWORD)
    with pytest.raises(ValueError) as e:
        create_method(name, 0.5, {"bogus": 1})
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"sparsity.options: unknown option(s) bogus for method '{name}'")
    assert message.endswith(f"; accepted: {', '.join(takes)}" if takes else f"'{name}'")


# sas converts LeNet-5's architecture at attach and exports it as it is (test_sas.py).
@pytest.mark.parametrize("name", [n for n in list_methods() if method_class(n).finalize_keeps_state and n != "sas"])
def test_a_finalize_said_to_keep_state_leaves_model_and_method_as_they_were(name):
    """safs.stages.train.finalized calls such a finalize on the live model every epoch."""
    model = lenet()
    method = create_method(name, 0.5, SHORT.get(name, {}))
    model = method.attach(model)
    if method_protocol(name) == "one_shot":
        method.prune(model)
    train(model, method, batches(), epochs=1)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_method = copy.deepcopy(method.state_dict())
    before_types = [type(m) for m in model.modules()]
    final = method.finalize(model)
    assert [type(m) for m in model.modules()] == before_types
    after = model.state_dict()
    assert after.keys() == before_model.keys()
    assert all(torch.equal(after[k], v) for k, v in before_model.items())
    assert method.state_dict() == before_method
    again = method.finalize(model)  # the same export twice: nothing was consumed
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), again.state_dict().values()))
