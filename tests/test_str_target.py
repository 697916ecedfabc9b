"""STR's target mode: a sparse train stage from the dense model ends at ``sparsity.target``.

A LeNet-5 is trained densely for a few epochs on digits (8x8, embedded), then STR runs the
training hooks in the order ``safs.stages.train.fit`` calls them, over ``train_epoch``. One
CPU thread: the machine is shared and these models are small.
"""

import copy
import io

import pytest
import torch
from torch import nn

from safs.data import Batches, load_dataset
from safs.models import create_model
from safs.sparsity import create_method
from safs.sparsity.soft_threshold import STRLayer
from safs.training.loop import evaluate, train_epoch
from safs.training.measure import measure


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("digits", seed=0)
    return ds, tuple(ds.split("train").x.shape[1:])


@pytest.fixture(scope="module")
def dense(data):
    ds, shape = data
    torch.manual_seed(0)
    model = create_model("lenet5", 10, shape, None)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = Batches(ds, "train", 64, train=True, seed=0)
    for e in range(3):
        train_epoch(model, batches.epoch(e), opt)
    return model


def optimizer(model, method, lr=0.003):
    return torch.optim.Adam(method.param_groups(model, [{"params": list(model.parameters())}]), lr=lr)


def sparse_stage(ds, model, method, epochs, opt=None, start_epoch=0, stop_epoch=None, on_epoch=None):
    """The hooks of a ``sparse: true`` train stage, as ``fit`` calls them."""
    opt = opt or optimizer(model, method)
    batches = Batches(ds, "train", 64, train=True, seed=1)
    method.on_train_start(len(batches), epochs, start_epoch)
    for e in range(start_epoch, epochs if stop_epoch is None else stop_epoch):
        method.on_epoch_start(e)
        train_epoch(model, batches.epoch(e), opt, method)
        method.on_epoch_end(e)
        if on_epoch:
            on_epoch(e)
    return opt


def run_str(ds, dense, target, epochs=3, **options):
    method = create_method("str", target, options)
    model = method.attach(copy.deepcopy(dense))
    levels = []
    sparse_stage(ds, model, method, epochs, on_epoch=lambda e: levels.append(method.measured_sparsity()))
    return model, method, levels


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --------------------------------------------------------------------------- options

def test_options_defaults_and_errors():
    method = create_method("str", 0.9)
    assert (method.mode, method.start, method.end, method.control) == ("target", 0.0, 0.0, "exact")
    assert create_method("str", 0.9, {"mode": "free"}).control == "indirect"
    assert create_method("str", 0.9, {"start": 0.2}).end == 0.2  # no ramp: the level is set at start
    with pytest.raises(ValueError) as err:
        create_method("str", 0.9, {"ramp": 0.5})
    assert str(err.value) == ("sparsity.options: unknown option(s) ramp for method 'str'; "
                              "accepted: end, mode, s_init, start, weight_decay")
    with pytest.raises(ValueError, match=r"sparsity.options.mode: 'exact'; accepted: target, free"):
        create_method("str", 0.9, {"mode": "exact"})
    with pytest.raises(ValueError, match=r"sparsity.options: start=0.6, end=0.5"):
        create_method("str", 0.9, {"start": 0.6, "end": 0.5})


def test_the_ramp_is_cubic_from_the_measured_start_to_the_target():
    method = create_method("str", 0.9, {"start": 0.2, "end": 0.6})
    method.total_steps = 100
    method.ramp_from = 0.3
    assert method.sparsity_at(19) is None  # thresholds free before the ramp
    assert method.sparsity_at(20) == pytest.approx(0.3)
    assert method.sparsity_at(40) == pytest.approx(0.9 - 0.6 * 0.5 ** 3)
    levels = [method.sparsity_at(t) for t in range(20, 101)]
    assert levels == sorted(levels) and levels[-41:] == [0.9] * 41  # held from ``end`` on


# --------------------------------------------------------------------------- the target

@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_target_mode_ends_at_the_target_from_the_dense_model(data, dense, target):
    ds, shape = data
    model, method, levels = run_str(ds, dense, target)
    final = method.finalize(model)
    achieved = measure(final, shape).sparsity
    assert achieved == pytest.approx(target, abs=1e-3)
    # The stage picks its reported epoch among those at the final sparsity: every epoch is there.
    assert all(abs(s - achieved) < 1e-3 for s in levels), levels
    # The finalized model computes what the trained one did (the zeros are in the weights).
    val = Batches(ds, "val", 512, train=False)
    assert evaluate(final, val.epoch(0)) == pytest.approx(evaluate(model, val.epoch(0)), abs=1e-5)
    floor = {0.5: 0.8, 0.9: 0.4}.get(target, 0.0)  # dense: 0.87; chance: 0.1 (3 short epochs)
    assert evaluate(final, val.epoch(0))[1] > floor


def test_a_ramp_reaches_the_target_and_holds_it(data, dense):
    ds, shape = data
    model, method, levels = run_str(ds, dense, 0.9, epochs=4, end=0.75)
    assert levels[0] < levels[1] < 0.9  # ramping, from the sparsity s_init gave
    assert levels[2:] == pytest.approx([0.9, 0.9], abs=1e-3)
    assert measure(method.finalize(model), shape).sparsity == pytest.approx(0.9, abs=1e-3)


def test_the_allocation_is_learned_per_layer(data, dense):
    ds, shape = data
    model, method, _ = run_str(ds, dense, 0.9)
    per_layer = [v["sparsity"] for v in measure(method.finalize(model), shape).per_layer.values()]
    assert len(per_layer) == 5 and max(per_layer) - min(per_layer) > 0.1, per_layer
    # Every s_ℓ started at s_init and was moved by the same offsets: any spread between them
    # is what the loss gradient taught each layer.
    s = torch.cat([p.detach() for p in method.thresholds(model).values()])
    assert float(s.max() - s.min()) > 1e-3, s


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("options, stop", [({}, 2), ({"end": 0.6}, 1)])  # held / mid-ramp
def test_a_stage_resumed_at_an_epoch_ends_as_an_uninterrupted_one(data, dense, options, stop):
    ds, _ = data
    epochs = 3
    reference, method, _ = run_str(ds, dense, 0.9, epochs, **options)
    expected = method.finalize(reference).state_dict()

    method = create_method("str", 0.9, options)
    model = method.attach(copy.deepcopy(dense))
    opt = sparse_stage(ds, model, method, epochs, stop_epoch=stop)
    saved = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict()})

    torch.manual_seed(5)  # a fresh process: the model's initial weights do not matter
    method = create_method("str", 0.9, options)
    model = method.attach(create_model("lenet5", 10, data[1], None))
    opt = optimizer(model, method)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    method.load_state_dict(saved["method"])
    model = method.attach(model)
    sparse_stage(ds, model, method, epochs, opt=opt, start_epoch=stop)
    resumed = method.finalize(model).state_dict()
    assert set(resumed) == set(expected)
    for k, v in expected.items():
        assert torch.equal(resumed[k], v), k


# --------------------------------------------------------------------------- other modes

def test_free_mode_is_str_as_published(data, dense):
    """The hooks do nothing in free mode: the run equals plain training of the reparametrised
    model, so the sparsity comes from s_init and the decay on s, not from the target."""
    ds, shape = data

    def train(with_hooks):
        method = create_method("str", 0.9, {"mode": "free", "s_init": -3.0})
        model = method.attach(copy.deepcopy(dense))
        opt = optimizer(model, method, lr=0.01)
        if with_hooks:
            sparse_stage(ds, model, method, 2, opt=opt)
        else:
            batches = Batches(ds, "train", 64, train=True, seed=1)
            for e in range(2):
                train_epoch(model, batches.epoch(e), opt)
        return method, method.finalize(model)

    method, hooked = train(True)
    _, plain = train(False)
    assert method.control == "indirect"
    for k, v in plain.state_dict().items():
        assert torch.equal(hooked.state_dict()[k], v), k
    assert abs(measure(hooked, shape).sparsity - 0.9) > 0.05


def test_a_model_that_arrives_sparse_keeps_its_masks(data, dense):
    ds, shape = data
    model, method, _ = run_str(ds, dense, 0.9, epochs=1)
    sparse = method.finalize(model)
    masks = {n: m.weight_mask.clone() for n, m in sparse.named_modules() if hasattr(m, "weight_mask")}
    later = create_method("str", 0.5)  # another target: the masks win, nothing is re-thresholded
    model = later.attach(sparse)
    assert later.control == "fixed" and not any(isinstance(m, STRLayer) for m in model.modules())
    sparse_stage(ds, model, later, 1)
    final = later.finalize(model)
    assert measure(final, shape).sparsity == pytest.approx(measure(sparse, shape).sparsity, abs=0)
    for n, m in final.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.equal(m.weight_mask, masks[n]), n
