"""train.py end to end over HTTP: two world servers on this machine's loopback, reached by URL."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http import start_server

ROOT = Path(__file__).resolve().parents[1]
SMOKE_WORLD = {"map": "straight", "num_towns": 2, "town": {"num_routes": 8, "route_length_m": 150.0}}  # as smoke's


def train(tmp_path: Path, name: str, *overrides: str) -> str:
    """Run train.py with its outputs under ``tmp_path``; returns its stderr (the progress bar)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"run_name={name}",
         f"checkpoint.dir={tmp_path / 'checkpoints'}", f"logger.log_dir={tmp_path / 'runs'}",
         f"hydra.run.dir={tmp_path / 'outputs' / name}", "logger.wandb.mode=disabled"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / name / "last.pt").exists()
    return result.stderr


def final_metrics(progress: str) -> str:
    """The last progress-bar figures but throughput: reward, driving score of the evaluation, KL."""
    return re.findall(r"R=[^,]+, DS=[^,]+, kl=[^,]+", progress)[-1]


@pytest.mark.slow
def test_train_py_over_two_http_services_matches_the_in_process_run(tmp_path):
    servers = [start_server(env=SMOKE_WORLD, index=i) for i in range(2)]
    try:
        urls = ",".join(server.url for server in servers)
        over_http = train(tmp_path, "http", "experiment=smoke_http", f"env.urls=[{urls}]")
        for server in servers:  # the trainer closed its sessions; the servers it did not start still serve
            assert server.process.poll() is None
    finally:
        for server in servers:
            server.stop()
    in_process = train(tmp_path, "sim", "experiment=smoke")  # the same world, in this process
    # Episode seeds follow world ids, not services, so the runs are the same run: same rewards, score and KL.
    assert final_metrics(over_http) == final_metrics(in_process)
