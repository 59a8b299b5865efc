"""train.py on Ray: the smoke run on a 2-CPU local Ray, and against a Ray head started separately (a cluster of
one node on loopback), joined through env.ray_address."""

import os
import signal
import socket
import subprocess
import sys
import tempfile  # a short folder: Ray's socket paths must stay under 108 bytes
import time
from pathlib import Path

import pytest

from grpo.checkpoint import load_checkpoint

pytest.importorskip("ray")
ROOT = Path(__file__).parents[1]
# Ray makes "127.0.0.1" the machine's network address on Linux; this keeps the head, its nodes and the driver
# on the loopback address (Ray's single-machine mode), a stale RAY_ADDRESS must not matter, and the driver
# authenticates with the token the head writes (~/.ray/auth_token), as recent Ray heads require by default.
LOOPBACK = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}


def _train(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "experiment=smoke", "run_name=ray", "env.launcher=ray",
               "env.num_services=2", f"checkpoint.dir={tmp_path / 'ckpt'}", f"logger.log_dir={tmp_path / 'runs'}",
               "logger.progress_bar=false", "logger.wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'hydra'}",
               *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400, env=LOOPBACK)


def test_the_smoke_run_on_a_two_cpu_ray(tmp_path):
    # Two 1-CPU actors hold both CPUs of the local Ray; the periodic evaluation runs in the trainer's process
    # (it used to ask for two more actors and wait for CPUs that never came free).
    done = _train(tmp_path, "env.ray_cpus_per_service=1.0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ckpt" / "ray" / "last.pt")["iteration"] == 4


@pytest.mark.slow
def test_training_joins_a_ray_head_started_separately(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={tempfile.mkdtemp(prefix='ray', dir='/tmp')}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=LOOPBACK)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        done = _train(tmp_path, f"env.ray_address=127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr[-3000:]
        assert load_checkpoint(tmp_path / "ckpt" / "ray" / "last.pt")["iteration"] == 4
    finally:  # the head and everything it started share its process group (its session)
        for stop in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, stop)
                head.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
