"""Set-up (Makefile, scripts/install_torch.sh, pyproject.toml's extras): what `make train` and `make test` would
install, read from `make -n`, and which torch build the installer picks on each kind of machine, from its dry run
(real pip resolutions against a find-links folder made here; nothing is installed)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")


def make_n(target: str, tmp_path: Path, *variables: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Run as a top-level make even when the suite itself runs under `make test` (CI): an inherited MAKELEVEL
    # makes make print "Entering directory" lines, and inherited MAKEFLAGS carry the outer make's options.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "-n", "--no-print-directory", target, f"VENV={tmp_path / 'venv'}", *variables],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def pip_installs(commands: str) -> list[str]:
    return [line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_make_train_installs_only_what_training_needs(tmp_path):
    """Issue 17: `make train` installed the dev extras (ray, carla) too."""
    commands = make_n("train", tmp_path)
    assert pip_installs(commands) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e ."]
    assert "scripts/install_torch.sh" in commands and commands.strip().endswith("train.py")


def test_make_test_installs_the_test_extra(tmp_path):
    installs = pip_installs(make_n("test", tmp_path))
    assert installs[-1].endswith('pip install -q -e ".[test]"')
    assert pip_installs(make_n("venv", tmp_path, "EXTRAS=bench"))[-1].endswith('-e ".[bench]"')


def test_carla_is_left_out_of_the_test_extra_where_it_has_no_wheel():
    """carla 0.9.16 has wheels for CPython 3.10-3.12 on Linux x86_64 and Windows only: on Python 3.13 or
    macOS/aarch64 `make test` would fail on it; there it is left out and its tests skip (importorskip)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (carla,) = [Requirement(r) for r in extras["test"] if r.startswith("carla")]
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert carla.marker.evaluate({**linux, "python_version": "3.11"})
    assert not carla.marker.evaluate({**linux, "python_version": "3.13"})
    assert not carla.marker.evaluate({"python_version": "3.12", "sys_platform": "darwin", "platform_machine": "arm64"})
    assert not carla.marker.evaluate({"python_version": "3.12", "sys_platform": "linux", "platform_machine": "aarch64"})
    assert {Requirement(r).name for r in extras["test"]} >= {"pytest", "ruff", "fastapi", "uvicorn", "ray"}


def fake_wheel(folder: Path, version: str) -> None:
    """A wheel named torch-<version> that pip can read the metadata of (it is never installed)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def install_torch(tmp_path: Path, *, gpu: bool, find_links: Path, index: str = "") -> list[str]:
    """The dry run of scripts/install_torch.sh on a machine with or without an NVIDIA GPU (a stand-in
    nvidia-smi that answers or fails) whose pip sees only ``find_links`` (no config files, no index)."""
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text(f"#!/bin/sh\nexit {0 if gpu else 9}\n")
    nvidia_smi.chmod(0o755)
    env = {**os.environ, "TORCH_DRY_RUN": "1", "NVIDIA_SMI": str(nvidia_smi), "PIP_CONFIG_FILE": os.devnull,
           "PIP_FIND_LINKS": str(find_links), "PIP_NO_INDEX": "1"}
    env.pop("PIP_EXTRA_INDEX_URL", None)
    done = subprocess.run(["sh", str(ROOT / "scripts" / "install_torch.sh"), sys.executable, "torch==2.13.0", index],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU/CUDA choice is made on Linux only")
def test_torch_build_follows_the_machine(tmp_path):
    """Issue 17: on a CPU-only Linux machine whose pip had no local CPU wheel, `make` installed the multi-GB
    CUDA torch. Now: a GPU gets PyPI's CUDA build; no GPU gets the local CPU wheel, else the CPU index."""
    local = tmp_path / "wheels"
    fake_wheel(local, "2.13.0+cpu")
    choice, command = install_torch(tmp_path, gpu=True, find_links=local)
    assert "CUDA" in choice and command.endswith("pip install -q torch==2.13.0")
    choice, command = install_torch(tmp_path, gpu=False, find_links=local)
    assert "local CPU wheel torch 2.13.0+cpu" in choice and command.endswith("pip install -q torch==2.13.0+cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    choice, command = install_torch(tmp_path, gpu=False, find_links=empty)
    assert "CPU wheel index" in choice
    assert command.endswith("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    _, command = install_torch(tmp_path, gpu=False, find_links=empty, index="https://download.pytorch.org/whl/cu124")
    assert command.endswith("--index-url https://download.pytorch.org/whl/cu124")  # TORCH_INDEX wins
