"""The benchmark scripts under bench/ run end to end (in miniature) and write what they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_writes_rates_and_shares_that_add_up(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--iterations", "1", "--warmup", "0",
         "--sim-steps", "2", "--out", str(out), "experiment=smoke", f"checkpoint.dir={tmp_path / 'checkpoints'}",
         f"logger.log_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["worlds"] == 16 and result["env_steps"] > 0  # experiment=smoke: 4 trunks x 4 branches
    assert result["env_steps_per_s"] > 0 and result["raw_simulator_world_steps_per_s"] > 0
    assert abs(sum(result["shares"].values()) - 1.0) < 1e-6
    assert result["shares"]["simulation"] > 0 and result["shares"]["update"] > 0
    assert "| env-steps/s, whole iterations |" in done.stdout
