"""train.py end to end over HTTP: two world servers on this machine's loopback, reached by URL."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http import start_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_py_over_two_http_services(tmp_path):
    servers = [start_server(index=i) for i in range(2)]
    try:
        urls = ",".join(server.url for server in servers)
        result = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "experiment=smoke_http", f"env.urls=[{urls}]",
             "run_name=http", f"checkpoint.dir={tmp_path / 'checkpoints'}", f"logger.log_dir={tmp_path / 'runs'}",
             f"hydra.run.dir={tmp_path / 'outputs'}", "logger.wandb.mode=disabled"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / "checkpoints" / "http" / "last.pt").exists()
        assert "DS=" in result.stderr  # the periodic evaluation ran over the services too
        for server in servers:  # the trainer closed its sessions; the servers it did not start still serve
            assert server.process.poll() is None
    finally:
        for server in servers:
            server.stop()
