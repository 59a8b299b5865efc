"""serve.py, the Hydra entry point: a real process on a free loopback port, answering the seed's verbs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from envs.services.http_client import LISTENING_LINE
from envs.services.http_server import ServeConfig
from envs.typed_config import from_dict
from tests.http import request
from tests.processes import process_alive

ROOT = Path(__file__).resolve().parents[1]


def run_serve(*overrides: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "GRPO_SERVE_TOKEN"}
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, str(ROOT / "serve.py"), *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environ, cwd=ROOT, start_new_session=True, text=True)


def test_serve_py_serves_the_configured_world():
    process = run_serve("serve.port=0", "serve.num_worlds=2", "env.map=straight", "env.num_towns=2")
    try:
        line = process.stdout.readline()
        assert line.startswith(LISTENING_LINE), process.stderr.read() if process.poll() is not None else line
        url = line[len(LISTENING_LINE):].strip()
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        assert request(url, "GET", "/info")[1]["num_worlds"] == 2
        status, answer = request(url, "POST", "/reset", {"route_id": 0})
        assert status == 200 and answer["observation"]["vehicle_state"]["speed"] == 0.0
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own process group, by its pid
        process.wait(60)
    assert not process_alive(process.pid)


def test_serve_py_refuses_to_listen_beyond_loopback_without_a_token():
    process = run_serve("serve.host=0.0.0.0", "serve.port=0")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "config error" in stderr and "serve.token" in stderr


def test_serve_yaml_holds_the_dataclass_defaults_key_for_key():
    data = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())["serve"]
    assert data.pop("token") == "${oc.env:GRPO_SERVE_TOKEN,null}"  # Hydra resolves it; null when unset
    assert from_dict(ServeConfig, data, "serve") == ServeConfig()
