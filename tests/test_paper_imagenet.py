"""The method papers' ImageNet pipelines (experiments/paper/*_imagenet.yaml): each parses, plans and
passes preflight (models and methods built) on a stand-in ImageNet tree, and without the data
``safs run`` refuses with one line, exit 2, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from safs.cli import main

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper"
PIPELINES = ["str_resnet50", "st3_resnet50", "nm24_resnet50", "sas_resnet18"]

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def path_of(name: str) -> Path:
    return PAPER / f"{name}_imagenet.yaml"


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    """The ILSVRC layout with two classes and one small JPEG per split and class."""
    import torch
    from torchvision.io import write_jpeg

    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            d = root / split / wnid
            d.mkdir(parents=True)
            img = torch.zeros(3, 40, 40, dtype=torch.uint8)
            img[c] = 200
            write_jpeg(img, str(d / f"{wnid}_0.JPEG"))
    return root


@pytest.mark.parametrize("name", PIPELINES)
def test_without_data_run_refuses_with_one_line_and_writes_nothing(tmp_path, name):
    results = tmp_path / "results"
    for extra in ([], ["data.data_dir=null"]):
        r = CliRunner().invoke(main, ["run", str(path_of(name)), *extra, "--results", str(results)])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "data.data_dir" in lines[0] and "imagenet" in lines[0], r.output
        assert not results.exists()


@pytest.mark.parametrize("name", PIPELINES)
def test_each_pipeline_plans_on_a_stand_in_imagenet(tmp_path, tiny_imagenet, name):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", str(path_of(name)), f"data.data_dir={tiny_imagenet}", "--results",
                                  str(results), "--dry-run"])
    assert r.exit_code == 0, r.output
    stages = [st["name"] for st in yaml.safe_load(path_of(name).read_text())["stages"]]
    listed = r.output.strip().splitlines()
    assert [line.split()[1] for line in listed] == stages
    assert not results.exists()  # a dry run writes nothing


def test_the_papers_settings_reach_the_plan():
    from safs.config import load_pipeline
    from safs.plan import plan
    from safs.runner import _dependencies

    teacher, sas = plan(load_pipeline(path_of("sas_resnet18")), Path("unused"))
    st = sas.spec["stage"]
    assert st["distill"] == {"teacher": "teacher", "alpha": 1.0, "temperature": 1.0}
    assert st["autoaugment"]["policy"] == "imagenet" and st["from_scratch"]
    assert sas.input_index is None and _dependencies(sas, [teacher, sas]) == [teacher]
    (str_stage,) = plan(load_pipeline(path_of("str_resnet50")), Path("unused"))
    s = str_stage.spec
    assert (s["stage"]["epochs"], s["stage"]["batch_size"], s["stage"]["label_smoothing"]) == (100, 256, 0.1)
    assert s["stage"]["optimizer"]["lr"] == 0.256 and s["stage"]["schedule"]["warmup_epochs"] == 5
    assert s["sparsity"]["options"]["s_init"] == -3200
    header = path_of("str_resnet50").read_text().split("\nname:")[0]
    assert "§2.3" in header and "2.251757813e-5" in header
