"""The built wheel is a complete safs: installed on its own (not the checkout), it lists the
built-in search spaces, copies out the example pipelines and plans the quickstart from any
directory."""

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

# What a source distribution of safs holds: the package, its data and the build files.
SOURCE = ["safs", "search_spaces", "experiments", "pyproject.toml", "setup.py", "README.md"]


def copy_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"  # a copy, so a build leaves nothing in the checkout
    src.mkdir()
    for name in SOURCE:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(p, src / name)
    return src


def pip_install(python: Path, *args: str, cwd: Path | None = None) -> None:
    # Without setuptools here (Python >= 3.12 venvs), pip builds in an isolated environment.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *isolation, *args], check=True,
                   env=_env(), cwd=cwd)


def build_wheel(dest: Path, tmp_path: Path) -> Path:
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dest),
                    str(copy_source(tmp_path))], check=True, env=_env())
    (wheel,) = dest.glob("safs-*.whl")
    return wheel


def make_venv(path: Path) -> Path:
    """A new virtualenv that sees this interpreter's packages (torch, Ray, pip, setuptools, ...)
    but not its safs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(path)], check=True)
    python = path / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # This interpreter is itself a virtualenv, whose packages --system-site-packages does not
        # reach: name its site-packages as plain paths (their .pth files, such as an editable
        # safs's, are not processed), after the new venv's own.
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        dirs = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()])
        Path(purelib, "_base_packages.pth").write_text("".join(f"{d}\n" for d in dirs if Path(d).is_dir()))
    return python


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the checkout must not be importable
    return env


@pytest.mark.slow
def test_wheel_installs_a_complete_safs(tmp_path):
    wheel = build_wheel(tmp_path / "wheels", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for f in ["safs/_spaces/activations/safs13.yaml", "safs/_spaces/hpo/safs.yaml",
              "safs/_experiments/quickstart.yaml", "safs/_experiments/paper/lenet5_mnist.yaml"]:
        assert f in names

    python = make_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    safs = str(python.parent / "safs")

    def run(*args):
        p = subprocess.run(args, cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{args}: {p.stdout}\n{p.stderr}"
        return p.stdout

    where = run(str(python), "-c", "import safs, sysconfig; print(safs.__file__); print(sysconfig.get_path('purelib'))")
    module, purelib = where.split()
    assert Path(module).is_relative_to(purelib) and Path(purelib).is_relative_to(tmp_path / "venv")
    assert not Path(module).is_relative_to(ROOT)

    from safs import __version__

    assert __version__ in run(safs, "--version")
    spaces = run(safs, "list", "spaces")
    assert "safs13" in spaces and "wide20" in spaces
    out = run(safs, "examples", ".")
    assert (work / "quickstart.yaml").is_file() and (work / "paper" / "lenet5_mnist.yaml").is_file(), out
    plan = run(safs, "run", "quickstart.yaml", "--dry-run")
    assert [line.split()[1] for line in plan.splitlines()] == ["dense", "prune", "retrain", "search", "stage1"]
    assert "[pending]" in plan
    changed = run(safs, "run", "quickstart.yaml", "stages.retrain.epochs=3", "--dry-run")
    assert [ln.split()[3] for ln in changed.splitlines()][:2] == [ln.split()[3] for ln in plan.splitlines()][:2]
    assert not (work / "results").exists()
    assert "modern" in run(str(python), "-c", "from safs.hpo.space import list_spaces; print(list_spaces())")


@pytest.mark.slow
def test_editable_install_reads_the_repository_files(tmp_path):
    src = copy_source(tmp_path)
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", str(src))
    work = tmp_path / "work"
    work.mkdir()
    code = ("import safs; from safs.search.space import SPACES_DIR; from safs.resources import data_dir; "
            "print(safs.__file__); print(SPACES_DIR); print(data_dir('experiments'))")
    out = subprocess.run([str(python), "-c", code], cwd=work, env=_env(), check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == [str(src / "safs" / "__init__.py"), str(src / "search_spaces" / "activations"),
                   str(src / "experiments")]
    subprocess.run([str(python.parent / "safs"), "examples"], cwd=work, env=_env(), check=True, capture_output=True)
    assert (work / "experiments" / "quickstart.yaml").read_text() == (ROOT / "experiments" / "quickstart.yaml").read_text()


def test_examples_copies_every_pipeline(tmp_path):
    from click.testing import CliRunner

    from safs.cli import main

    dest = tmp_path / "ex"
    result = CliRunner().invoke(main, ["examples", str(dest)])
    assert result.exit_code == 0, result.output
    src = ROOT / "experiments"
    expected = sorted(p.relative_to(src) for p in src.rglob("*.yaml"))
    assert sorted(p.relative_to(dest) for p in dest.rglob("*.yaml")) == expected
    assert (dest / "quickstart.yaml").read_text() == (src / "quickstart.yaml").read_text()
    (dest / "quickstart.yaml").write_text("mine")
    again = CliRunner().invoke(main, ["examples", str(dest)])
    assert again.exit_code == 2 and "--force" in again.output
    assert (dest / "quickstart.yaml").read_text() == "mine"  # nothing overwritten
    assert CliRunner().invoke(main, ["examples", str(dest), "--force"]).exit_code == 0
    assert (dest / "quickstart.yaml").read_text() == (src / "quickstart.yaml").read_text()
