"""Image trees streamed from their files (``data.in_memory: false``/``auto``): the same batches
as in memory, the same order after a resume, rank shards, the memory rule, the config's
errors, and a pipeline trained from the files whose rows are their models."""

import json
import logging

import pytest
import torch
from click.testing import CliRunner

from conftest import write_tree
from safs.data import DataError, batches, load_dataset
from safs.data.batching import Batches, check_worker
from safs.data.streaming import FileSplit, StreamedBatches, fits_in_memory, memory_budget

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("tree"), per_class=14, classes=3)


def both(tree, **kw):
    kw = {"image_size": 12, "seed": 5, **kw}
    return load_dataset("imagefolder", tree, **kw), load_dataset("imagefolder", tree, in_memory=False, **kw)


def batch_list(b, epoch):
    return [(x.clone(), y.clone()) for x, y in b.epoch(epoch)]


def test_a_streamed_split_is_its_file_list_with_the_in_memory_rows(tree):
    memory, streamed = both(tree)
    assert streamed.streamed and not memory.streamed
    for split in ("train", "val", "test"):
        files = streamed.split(split)
        assert isinstance(files, FileSplit) and len(files) == len(memory.split(split))
        assert torch.equal(files.y, memory.split(split).y)
        assert all(p.startswith(f"class_{int(c)}/") for p, c in zip(files.paths, files.y))
    assert (streamed.num_classes, streamed.input_shape, streamed.crop_padding) == (3, (3, 12, 12), 1)
    assert set(streamed.train.paths).isdisjoint(streamed.val.paths) and set(streamed.val.paths).isdisjoint(
        streamed.test.paths)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_in_memory_batches(tree, workers):
    """Same decoder, same split rows, same (seed, epoch) draws: the very same tensors, epoch
    after epoch, with DataLoader worker processes that persist across epochs."""
    memory, streamed = both(tree)
    mem = batches(memory, "train", 8, seed=3)
    st = batches(streamed, "train", 8, seed=3, workers=workers)
    assert isinstance(mem, Batches) and isinstance(st, StreamedBatches) and len(st) == len(mem) == 4  # 30 train images
    pids = None
    for epoch in (0, 1):
        a, b = batch_list(mem, epoch), batch_list(st, epoch)
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
        if workers:
            now = [w.pid for w in st._loader._iterator._workers]
            assert len(now) == workers and (pids is None or now == pids)  # persistent
            pids = now
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(memory.train.y.tolist())
    # a pass left after one batch (the one-shot search cycles its validation batches so) does
    # not leak into the next one
    next(iter(st.epoch(4)))
    a, b = batch_list(mem, 5), batch_list(st, 5)
    assert len(a) == len(b) == 4 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in batch_list(st, 0)]), torch.cat([y for _, y in batch_list(st, 1)]))
    for split in ("val", "test"):  # evaluation: stored order, no augmentation
        ev_m, ev_s = batch_list(batches(memory, split, 7, train=False), 0), batch_list(
            batches(streamed, split, 7, train=False, workers=workers), 0)
        assert len(ev_m) == len(ev_s) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                              for a, b in zip(ev_m, ev_s))


def test_a_fresh_streamed_batches_replays_an_epoch(tree):
    """A resumed trial builds its batches anew and starts at epoch k: the same data."""
    _, streamed = both(tree)
    first = batches(streamed, "train", 16, seed=9, workers=0)
    batch_list(first, 0)
    again = batches(streamed, "train", 16, seed=9, workers=0)
    for (xa, ya), (xb, yb) in zip(batch_list(first, 1), batch_list(again, 1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = batches(streamed, "train", 16, seed=10, workers=0)
    assert not torch.equal(torch.cat(other_seed.plan(1)[0]), torch.cat(again.plan(1)[0]))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_the_workers_shares_of_each_step_are_the_one_worker_batch(tree, world_size):
    _, streamed = both(tree)
    full = batches(streamed, "train", 8, seed=1, workers=0)
    order, shifts, flips = full.plan(2)
    ranks = [batches(streamed, "train", 8, seed=1, rank=r, world_size=world_size, workers=0)
             for r in range(world_size)]
    plans = [r.plan(2) for r in ranks]
    assert len({len(r) for r in ranks}) == 1  # every worker takes the same number of steps
    offsets = [0] * world_size
    for step, whole in enumerate(order[: len(ranks[0])]):
        shares = [p[0][step] for p in plans]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert torch.equal(torch.stack([s[: min(map(len, shares))] for s in shares], 1).flatten(),
                           whole[: min(map(len, shares)) * world_size])
        assert sorted(torch.cat(shares).tolist()) == sorted(whole.tolist())  # disjoint, together the batch
        for r, (p, share) in enumerate(zip(plans, shares)):  # each sample keeps its augmentation draw
            at = slice(offsets[r], offsets[r] + len(share))
            offsets[r] = at.stop
            first = sum(len(b) for b in order[:step])
            mine = slice(first + r, first + len(whole), world_size)
            assert torch.equal(p[1][at], shifts[mine]) and torch.equal(p[2][at], flips[mine])
    ys = [[y for _, y in b.epoch(2)] for b in ranks]
    for step, whole in enumerate(order[: len(ranks[0])]):
        assert sorted(torch.cat([y[step] for y in ys]).tolist()) == sorted(streamed.train.y[whole].tolist())


@pytest.mark.parametrize("split, train", [("train", True), ("test", False)])
def test_in_memory_worker_shares_are_the_streamed_ones(tree, split, train):
    memory, streamed = both(tree)
    for rank in range(3):
        mem = batches(memory, split, 4, train=train, seed=2, rank=rank, world_size=3)
        st = batches(streamed, split, 4, train=train, seed=2, rank=rank, world_size=3, workers=0)
        assert len(mem) == len(st)
        pairs = list(zip(batch_list(mem, 1), batch_list(st, 1)))
        assert len(pairs) == len(mem) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
    whole = [y for _, y in batches(memory, split, 4, train=train, seed=2).epoch(1)]
    shares = [[y for _, y in batches(memory, split, 4, train=train, seed=2, rank=r, world_size=3).epoch(1)]
              for r in range(3)]
    if train:  # each step's shares interleave into the one-worker batch
        for step, y in enumerate(whole[: len(shares[0])]):
            assert sorted(torch.cat([s[step] for s in shares]).tolist()) == sorted(y.tolist())
    else:  # evaluation is not split: every worker sees the whole split
        assert all(torch.equal(torch.cat(s), torch.cat(whole)) for s in shares)


def test_worker_arguments():
    for rank, ws in ((2, 2), (-1, 2)):
        with pytest.raises(ValueError, match="rank must be in"):
            check_worker(8, rank, ws)
    with pytest.raises(ValueError, match="smaller than world_size"):
        check_worker(2, 0, 3)


def test_auto_streams_when_the_budget_is_small(tree, caplog, monkeypatch):
    from safs.data import streaming

    nbytes = 3 * 14 * 3 * 12 * 12  # 42 images of 3x12x12 uint8
    with caplog.at_level(logging.INFO, logger="safs"):
        small = load_dataset("imagefolder", tree, image_size=12, in_memory="auto", memory_budget_gb=nbytes / 1e9 - 1e-9)
        exact = load_dataset("imagefolder", tree, image_size=12, in_memory="auto", memory_budget_gb=nbytes / 1e9)
    assert small.streamed and not exact.streamed
    lines = [r.getMessage() for r in caplog.records if r.name == "safs"]
    assert len(lines) == 2 and "streamed from its files" in lines[0] and "held in memory" in lines[1]
    assert "data.memory_budget_gb=" in lines[0]
    # without a set budget: half the available memory (on a GPU trial also half its free memory)
    monkeypatch.setattr(streaming, "_available_ram", lambda: 4 * nbytes)
    assert memory_budget("cpu") == (2 * nbytes, "50% of the available memory")
    assert fits_in_memory("imagefolder", 2 * nbytes) and not fits_in_memory("imagefolder", 2 * nbytes + 1)
    assert not load_dataset("imagefolder", tree, image_size=12, in_memory="auto").streamed
    monkeypatch.setattr(streaming, "_available_ram", lambda: nbytes)
    assert load_dataset("imagefolder", tree, image_size=12, in_memory="auto").streamed
    assert not load_dataset("digits", in_memory="auto").streamed  # not an image tree: always in memory


def test_in_memory_errors_in_the_library():
    with pytest.raises(DataError, match="data.in_memory: dataset 'digits' is always held in memory; "
                                        "in_memory: false is only for imagefolder, imagenet"):
        load_dataset("digits", in_memory=False)
    for bad in ("yes", 1, None):
        with pytest.raises(DataError, match="data.in_memory: expected auto, true or false"):
            load_dataset("digits", in_memory=bad)


CONFIG = """
name: t
data: {data}
model: {{name: lenet5}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
"""


@pytest.mark.parametrize("data, extra", [
    ("{name: imagefolder, data_dir: tree, in_memory: maybe}", "expected auto, true or false, got 'maybe'"),
    ("{name: digits, in_memory: false}", "dataset 'digits' is always held in memory"),
    ("{name: imagefolder, data_dir: tree, memory_budget_gb: 0}", "greater than 0"),
    ("{name: imagefolder, data_dir: tree, loader_workers: -1}", "greater than or equal to 0"),
])
def test_bad_in_memory_settings_exit_2_with_one_line(tmp_path, data, extra):
    from safs.cli import main

    write_tree(tmp_path / "tree", per_class=1)
    f = tmp_path / "p.yaml"
    f.write_text(CONFIG.format(data=data))
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data." in lines[0] and extra in lines[0], r.output
    assert not (tmp_path / "results").exists()


def test_how_the_data_is_read_is_not_in_the_stage_hash(tmp_path):
    from safs.config import parse_pipeline
    from safs.plan import plan

    import yaml

    write_tree(tmp_path / "tree", per_class=1)
    hashes = set()
    for extra in ("", ", in_memory: false", ", in_memory: true, loader_workers: 3", ", memory_budget_gb: 2"):
        cfg = parse_pipeline(yaml.safe_load(CONFIG.format(data=f"{{name: imagefolder, data_dir: x{extra}}}")))
        [stage] = plan(cfg, tmp_path / "results")
        hashes.add(stage.hash)
    assert len(hashes) == 1
    assert stage.spec["data"]["memory_budget_gb"] == 2 and stage.spec["data"]["in_memory"] == "auto"


PIPELINE = """
name: {name}
seed: 0
data: {{name: imagefolder, data_dir: {tree}, image_size: 16, in_memory: {in_memory}, loader_workers: 1}}
model: {{name: lenet5}}
sparsity: {{method: lwm, target: 0.8}}
resources: {{cpus_per_trial: 1}}
defaults:
  train: {{batch_size: 16, eval_batch_size: 32, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 2}}
  - {{name: prune, kind: prune}}
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_pipeline_streamed_from_files_trains_like_in_memory_and_rows_are_models(tmp_path, ray_session):
    """The same pipeline with the tree streamed and held in memory gives the same rows (the
    batches are the same tensors), and each row re-evaluates to its model.pt."""
    import yaml

    import safs
    from safs import runner
    from safs.config import parse_pipeline
    from safs.data import normalise

    from conftest import by_stage, records

    tree = write_tree(tmp_path / "tree", per_class=30, classes=3)
    rows = {}
    for name, in_memory in (("streamed", "false"), ("memory", "true")):
        cfg = parse_pipeline(yaml.safe_load(PIPELINE.format(name=name, tree=tree, in_memory=in_memory)))
        runner.run(cfg, tmp_path / "results", quiet=True, echo=lambda *_: None)
        recs = records(tmp_path / "results" / name)
        rows[name] = {s: by_stage(recs, s)["row"] for s in ("dense", "prune")}
        # streamed: nothing decoded up front, so no cache; in memory: decoded once and cached
        assert len(list(tree.glob("safs-cache-*.pt"))) == (name == "memory")
    for stage in ("dense", "prune"):
        a, b = rows["streamed"][stage], rows["memory"][stage]
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-6), (stage, a, b)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    ds = safs.load_dataset("imagefolder", tree, image_size=16)
    for stage_dir in sorted((tmp_path / "results" / "streamed").glob("*/stage.json")):
        rec = json.loads(stage_dir.read_text())
        model = safs.load_model(stage_dir.parent)
        with torch.no_grad():
            acc = (model(normalise(ds.test.x, ds)).argmax(1) == ds.test.y).float().mean().item()
        assert acc == pytest.approx(rec["row"]["test_acc"], abs=0.005), (rec["name"], acc, rec["row"])
    assert rows["streamed"]["dense"]["test_acc"] > 0.5  # three colours: learnt in two epochs


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_file_met_while_streaming_is_one_line_naming_it(tmp_path, workers):
    write_tree(tmp_path, per_class=4)
    bad = tmp_path / "class_1" / "img_999.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    streamed = load_dataset("imagefolder", tmp_path, image_size=8, in_memory=False, test_fraction=0.01)
    assert str(bad.relative_to(tmp_path)) in streamed.train.paths + streamed.val.paths  # listed, not opened
    split = "train" if str(bad.relative_to(tmp_path)) in streamed.train.paths else "val"
    with pytest.raises(DataError) as err:
        batch_list(batches(streamed, split, 4, workers=workers), 0)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.data_dir: cannot decode image") and str(bad) in msg
