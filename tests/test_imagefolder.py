"""ImageFolder and ImageNet trees of real JPEG/PNG files: layouts, splits, the decoded cache,
corrupt files, preflight and the config's image_size."""

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.io import write_jpeg, write_png

from conftest import write_tree

from safs.data import DataError, check_dataset, dataset_shape, load_dataset
from safs.data import imagefolder

# torchvision 0.29 announces TorchCodec on every encode and decode
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

def dominant(x: torch.Tensor) -> torch.Tensor:
    """The channel with the most total intensity, per image."""
    return x.float().sum((2, 3)).argmax(1)


def test_train_val_layout_shapes_classes_and_labels(tmp_path):
    write_tree(tmp_path / "train", per_class=20)
    write_tree(tmp_path / "val", per_class=6)
    ds = load_dataset("imagefolder", tmp_path, image_size=[16, 12], seed=3)
    assert ds.classes == ("class_0", "class_1", "class_2") and ds.num_classes == 3
    assert ds.input_shape == (3, 16, 12)
    assert len(ds.train) + len(ds.val) == 60 and len(ds.val) == 6 and len(ds.test) == 18
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 16, 12)
        assert torch.equal(dominant(split.x), split.y)  # labels follow the folders
    assert torch.equal(ds.test.y.bincount(), torch.tensor([6, 6, 6]))
    again = load_dataset("imagefolder", tmp_path, image_size=[16, 12], seed=3)
    assert torch.equal(again.val.x, ds.val.x)
    other = load_dataset("imagefolder", tmp_path, image_size=[16, 12], seed=4)
    assert not torch.equal(other.val.y, ds.val.y) or not torch.equal(other.val.x, ds.val.x)
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("imagefolder", tmp_path, test_fraction=0.2)


def test_one_tree_split_by_seed_grey_converted_to_rgb(tmp_path):
    write_tree(tmp_path, per_class=20, grey_every=3)
    ds = load_dataset("imagefolder", tmp_path, val_fraction=0.2, test_fraction=0.25)
    assert ds.input_shape == (3, 32, 32)  # the default image_size
    assert (len(ds.train), len(ds.val), len(ds.test)) == (33, 12, 15)
    grey = [p for p in (tmp_path / "class_0").iterdir() if p.suffix == ".png"]
    from torchvision.io import decode_image

    assert any(decode_image(str(p)).shape[0] == 1 for p in grey)  # the tree does hold grey files
    x = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y])
    assert x.shape == (60, 3, 32, 32) and torch.equal(y.bincount(), torch.tensor([20, 20, 20]))
    grey_rgb = ((x[:, 0] == x[:, 1]) & (x[:, 1] == x[:, 2])).flatten(1).all(1)
    assert 0 < int(grey_rgb.sum()) < 60  # grey files became three equal channels
    assert torch.equal(dominant(x)[~grey_rgb], y[~grey_rgb])  # the rest keep their colour
    assert ds.mean.shape == (1, 3, 1, 1) and ds.scale == 1 / 255 and ds.flip and ds.crop_padding == 4


def test_second_load_reads_the_cache_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    write_tree(tmp_path, per_class=5)
    first = load_dataset("imagefolder", tmp_path, image_size=8)
    caches = sorted(tmp_path.glob("safs-cache-*.pt"))
    assert len(caches) == 1 and len(caches[0].stem) == len("safs-cache-") + 16

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(imagefolder, "decode_file", no_decoding)
    second = load_dataset("imagefolder", tmp_path, image_size=[8, 8])
    assert torch.equal(second.train.x, first.train.x) and torch.equal(second.test.y, first.test.y)
    # another size, or a touched file, is another file list hash: decoded afresh
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset("imagefolder", tmp_path, image_size=[9, 8])
    f = next((tmp_path / "class_1").iterdir())
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset("imagefolder", tmp_path, image_size=[8, 8])


def test_a_damaged_cache_is_decoded_again(tmp_path):
    write_tree(tmp_path, per_class=4)
    first = load_dataset("imagefolder", tmp_path, image_size=8)
    [cache] = tmp_path.glob("safs-cache-*.pt")
    cache.write_bytes(b"not a tensor file")
    again = load_dataset("imagefolder", tmp_path, image_size=8)
    assert torch.equal(again.train.x, first.train.x)
    assert cache.stat().st_size > 1000


def test_a_corrupt_image_is_one_line_naming_its_file(tmp_path):
    write_tree(tmp_path, per_class=4)
    bad = tmp_path / "class_2" / "img_999.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", tmp_path, image_size=8)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("data.data_dir: cannot decode image")
    assert not list(tmp_path.glob("safs-cache-*.pt"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_data_dir_caches_next_to_it(tmp_path):
    data = write_tree(tmp_path / "data", per_class=3)
    data.chmod(0o555)
    try:
        load_dataset("imagefolder", data, image_size=8)
        assert list((tmp_path / "data-safs-cache").glob("safs-cache-*.pt"))
    finally:
        data.chmod(0o755)


def test_cache_dir_falls_back_when_the_data_dir_is_not_writable(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    real = os.access
    monkeypatch.setattr(imagefolder.os, "access", lambda p, mode: False if Path(p) == data else real(p, mode))
    assert imagefolder.cache_dir(data) == tmp_path / "data-safs-cache"


def test_preflight_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no data_dir was given"):
        check_dataset("imagefolder", None)
    with pytest.raises(DataError, match="is not a directory"):
        check_dataset("imagefolder", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        check_dataset("imagefolder", tmp_path / "empty")
    write_tree(tmp_path / "tree", per_class=2)
    with pytest.raises(DataError, match="train/ and val/"):
        check_dataset("imagenet", tmp_path / "tree")
    (tmp_path / "tree" / "class_9").mkdir()
    check_dataset("imagefolder", tmp_path / "tree")  # folders only: no file is opened
    with pytest.raises(DataError, match="class folder .*class_9' holds no JPEG or PNG"):
        load_dataset("imagefolder", tmp_path / "tree")
    with pytest.raises(DataError, match="data.image_size: dataset 'mnist' has a fixed image size"):
        check_dataset("mnist", tmp_path, [8, 8])
    with pytest.raises(DataError, match=r"data.image_size: expected \[H, W\]"):
        dataset_shape("imagefolder", tmp_path / "tree", [8, 0])
    assert dataset_shape("imagefolder", tmp_path / "tree", 20) == (4, (3, 20, 20))


def test_val_classes_must_be_train_classes(tmp_path):
    write_tree(tmp_path / "train", per_class=2, classes=2)
    write_tree(tmp_path / "val", per_class=2, classes=3)
    with pytest.raises(DataError, match="classes that train/ lacks: class_2"):
        check_dataset("imagefolder", tmp_path)


def test_imagenet_resizes_256_and_centre_crops_224(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                img = torch.zeros(3, 300, 450, dtype=torch.uint8)
                img[c] = 200
                img[:, :, :30] = 255  # a white band on the left, outside the centre crop
                write_jpeg(img, str(d / f"{wnid}_{i}.JPEG"))
    assert dataset_shape("imagenet", tmp_path) == (2, (3, 224, 224))
    ds = load_dataset("imagenet", tmp_path, val_fraction=0.34)
    assert ds.classes == ("n01440764", "n01443537") and ds.input_shape == (3, 224, 224)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 2, 2)
    # 300x450 -> 256x384; the centre 224 columns start at 80, past the band (30 -> 26 px)
    assert torch.equal(dominant(ds.test.x), ds.test.y) and ds.test.x[:, :, :, 0].float().mean() < 120
    assert ds.crop_padding == 28 and ds.flip
    small = load_dataset("imagenet", tmp_path, image_size=[112, 112])
    assert small.train.x.shape[1:] == (3, 112, 112)


CONFIG = """
name: t
data: {data}
model: {{name: lenet5}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
"""


@pytest.mark.parametrize("data, field, extra", [
    ("{name: digits, image_size: [8, 8]}", "data.image_size", "only for imagefolder, imagenet"),
    ("{name: imagefolder, data_dir: tree, image_size: [8, -1]}", "data.image_size", "[H, W]"),
    ("{name: imagefolder, data_dir: nowhere}", "data.data_dir", "is not a directory"),
    ("{name: imagefolder, data_dir: empty}", "data.data_dir", "holds no class folders"),
])
def test_bad_data_blocks_exit_2_with_one_line(tmp_path, data, field, extra):
    from safs.cli import main

    write_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "empty").mkdir()
    f = tmp_path / "p.yaml"
    f.write_text(CONFIG.format(data=data))
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and extra in lines[0], r.output
    assert not (tmp_path / "results").exists()


def test_preflight_builds_the_model_for_the_folders_and_image_size(tmp_path):
    from safs.config import load_pipeline
    from safs.plan import plan
    from safs.preflight import preflight

    write_tree(tmp_path / "tree", per_class=1, classes=3)
    f = tmp_path / "p.yaml"
    f.write_text(CONFIG.format(data="{name: imagefolder, data_dir: tree, image_size: 12}"))
    cfg = preflight(load_pipeline(f), f)
    assert cfg.data.image_size == [12, 12] and cfg.data.data_dir == str((tmp_path / "tree").resolve())
    [stage] = plan(cfg, tmp_path / "results")
    assert stage.spec["data"]["image_size"] == [12, 12]
    # a dataset without image_size keeps the hash it had before the field existed
    f.write_text(CONFIG.format(data="{name: digits}"))
    [digits] = plan(load_pipeline(f), tmp_path / "results")
    from safs.io import digest
    from safs.plan import HASH_LENGTH, HASH_VERSION

    from safs.settings import HASHED_WHEN_SET, UNHASHED_SETTINGS

    settings = {k: v for k, v in digits.spec["stage"].items() if k not in ("name", "label", "space", "max_concurrent",
                                                                          "input", "settings_from")
                and k not in UNHASHED_SETTINGS and k not in HASHED_WHEN_SET}  # added since, at their defaults
    context = {"data": {"name": "digits", "split_seed": 0, "val_fraction": None, "test_fraction": None},
               "model": digits.spec["model"], "seed": 0}
    assert digits.hash == digest({"v": HASH_VERSION, "settings": settings, "sparsity": None, "upstream": context},
                                 length=HASH_LENGTH)


SLOW_PIPELINE = """
name: {name}
seed: 0
data: {data}
model: {{name: lenet5}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}, augment: false}}
stages:
  - {{name: dense, kind: train, epochs: 12}}
"""


@pytest.mark.slow
def test_a_digits_image_tree_trains_like_the_digits_in_memory(tmp_path):
    """sklearn's digits written as 16x16 PNG files in class folders train LeNet-5 as well as
    the same digits held in memory (the `digits` dataset)."""
    import json
    import subprocess

    from sklearn.datasets import load_digits

    from conftest import by_stage, records, safs_cmd, subprocess_env

    bunch = load_digits()
    tree = tmp_path / "digits_tree"
    for i, (img, label) in enumerate(zip(bunch.images, bunch.target)):
        d = tree / f"digit_{label}"
        d.mkdir(parents=True, exist_ok=True)
        px = torch.from_numpy((img * 255 / 16).round().astype("uint8"))[None]
        write_png(px.repeat_interleave(2, 1).repeat_interleave(2, 2), str(d / f"{i:04d}.png"))
    fractions = "val_fraction: 0.15, test_fraction: 0.15"
    rows = {}
    for name, data in (("tree", f"{{name: imagefolder, data_dir: digits_tree, image_size: [16, 16], {fractions}}}"),
                       ("memory", f"{{name: digits, {fractions}}}")):
        f = tmp_path / f"{name}.yaml"
        f.write_text(SLOW_PIPELINE.format(name=name, data=data))
        p = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet",
                                         "--num-cpus", "2"], cwd=tmp_path, env=subprocess_env(),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        rows[name] = by_stage(records(tmp_path / "results" / name), "dense")["row"]
    print({k: round(r["test_acc"], 4) for k, r in rows.items()})
    assert rows["tree"]["dataset"] == "imagefolder"
    assert len(list(tree.glob("safs-cache-*.pt"))) == 1
    assert rows["memory"]["test_acc"] > 0.85, json.dumps(rows)
    assert abs(rows["tree"]["test_acc"] - rows["memory"]["test_acc"]) <= 0.10, json.dumps(rows)
