"""evaluate.py end to end: a checkpoint from the smoke training, the report it writes, and one-line errors."""

import csv
import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).parents[1]


def run(script: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory) -> Path:
    """last.pt of the smoke experiment, shortened to two iterations with a short final evaluation."""
    tmp = tmp_path_factory.mktemp("smoke")
    done = run("train.py", "experiment=smoke", "run_name=smoke", "grpo.iterations=2", "eval.max_steps=20",
               "logger.picture_every=0", "logger.progress_bar=false", "logger.wandb.mode=disabled",
               f"checkpoint.dir={tmp / 'ckpt'}", f"logger.log_dir={tmp / 'runs'}", f"hydra.run.dir={tmp / 'hydra'}")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "ckpt" / "smoke" / "last.pt"


def test_evaluate_a_smoke_checkpoint_writes_the_report(smoke_checkpoint):
    done = run("evaluate.py", f"checkpoint={smoke_checkpoint}", "eval.num_routes=3", "eval.max_steps=40",
               "eval.num_gifs=1", "eval.num_maps=2", "eval.log_run=true")
    assert done.returncode == 0, done.stderr[-2000:]
    out = smoke_checkpoint.parent / "eval_last"  # the default: beside the checkpoint
    assert "| driver | driving score |" in done.stdout and "| expert |" in done.stdout, done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["drivers"]) == ["policy", "expert", "random"]
    assert summary["iteration"] == 2 and summary["suite"]["num_routes"] == 3
    assert summary["env_config"]["split"] == "eval" and summary["env_config"]["map"] == "straight"  # the checkpoint's
    for driver in ("policy", "expert", "random"):
        routes = json.loads((out / f"routes_{driver}.json").read_text())
        rows = list(csv.DictReader((out / f"routes_{driver}.csv").open()))
        assert [r["seed"] for r in routes] == [1000, 1001, 1002] and len(rows) == 3
        assert 0.0 <= summary["drivers"][driver]["eval/driving_score"] <= 100.0
    markdown = (out / "summary.md").read_text()
    assert "| driver | driving score | route completion (%) |" in markdown and "| random |" in markdown
    for name in ("driving_score_per_route.png", "infractions.png", "trajectories.png", "gifs/route_1000.gif"):
        assert (out / name).stat().st_size > 1000, name
    # eval.log_run: the run's TensorBoard folder holds the evaluation at the checkpoint's iteration
    events = sorted(glob.glob(str(smoke_checkpoint.parents[2] / "runs" / "smoke" / "events.out.tfevents.*")))
    accumulator = EventAccumulator(events[-1])
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("evaluate/policy/driving_score")] == [2]
    assert "evaluate/expert/route_completion" in accumulator.Tags()["scalars"]


def _assert_one_line_error(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_a_missing_checkpoint_is_one_clear_line(tmp_path):
    _assert_one_line_error(run("evaluate.py", f"checkpoint={tmp_path / 'last.pt'}"), "does not exist")


def test_a_torch_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    _assert_one_line_error(run("evaluate.py", f"checkpoint={tmp_path / 'model.pt'}"), "not a grpo-drive checkpoint")


def test_a_truncated_checkpoint_is_one_clear_line(tmp_path, smoke_checkpoint):
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(smoke_checkpoint.read_bytes()[:4000])
    _assert_one_line_error(run("evaluate.py", f"checkpoint={truncated}"), "checkpoint error:",
                           "is truncated or not a torch checkpoint")
