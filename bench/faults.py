"""Reliability benchmark: service kills survived during training, time to recover from a hung service, and
byte-flip fuzzing of snapshots.

    python bench/faults.py                  # 20 kills, hang recovery, 1,000 flips (about 2 minutes here)
    python bench/faults.py --kills 5 --flips 300

* **Kills**: the smoke experiment on two services (``experiment=smoke env.num_services=2``, eval and
  pictures off) trains while a thread SIGKILLs a random service by its pid every 0.3-1.5 s (after the warm
  start), ``--kills`` times, at whatever moment that falls on: a service mid-call (its process running) or
  idle (sleeping on its pipe). Training then runs two more iterations. Reported: kills (idle / busy),
  restarts, groups dropped, iterations, the restart lines printed, and the service pids still alive after
  the run closed (orphans; must be 0).
* **Hang**: two services, 40 steps to measure the step time, then SIGSTOP of one service: the seconds until
  the next ``step`` returns (the deadline plus a restart), and the same for a service stopped while idle
  (found by the heartbeat).
* **Fuzz**: single-byte changes (random position, random non-zero XOR) of the bytes of a snapshot of 8
  worlds of the default busy world: how many were refused with a BackendError, restored silently, or
  escaped as another exception. For comparison, the same changes applied to the payload *behind* the
  checksum (re-framed, as if there were no checksum): how many then restored a different world silently.

Writes ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch

from envs.api import BackendError, Snapshot, frame_snapshot_payload
from envs.factory import build_backend, env_config_from_dict

RESULTS = Path(__file__).resolve().parent / "results"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _running(pid: int) -> bool:
    """The process is on a CPU (mid-call), not sleeping on its pipe (idle)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "R"
    except FileNotFoundError:
        return False


def smoke_config(directory: Path, **overrides):
    """experiment=smoke on two services, writing under ``directory``, without eval or pictures."""
    from hydra import compose, initialize_config_dir

    from grpo.config import train_config_from_dict

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=smoke", "env.num_services=2", "run_name=faults", "eval.every=0", "logger.picture_every=0",
            "logger.progress_bar=false", "logger.wandb.mode=disabled", "logger.tensorboard=false",
            f"checkpoint.dir={directory / 'ckpt'}", f"logger.log_dir={directory / 'runs'}",
            *[f"{key}={value}" for key, value in overrides.items()]])
    from omegaconf import OmegaConf

    return train_config_from_dict(OmegaConf.to_container(cfg, resolve=True))


def kill_during_training(kills: int = 20, seed: int = 0, gap_s: tuple[float, float] = (0.3, 1.5),
                         directory: Path | None = None) -> dict:
    """Train the smoke experiment on two services while SIGKILLing a random service ``kills`` times."""
    from grpo.trainer import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        config = smoke_config(Path(directory or scratch), **{"grpo.iterations": 100_000})
        trainer = Trainer(config)
        backend = trainer.backend
        lines: list[str] = []
        report = backend.report
        backend.report = lambda line: (lines.append(line), report(line))
        seen: set[int] = set(p for p in backend.pids if p)
        record = {"idle": 0, "busy": 0}
        done = threading.Event()
        chooser = random.Random(seed)

        def killer() -> None:
            while sum(record.values()) < kills and not done.is_set():
                time.sleep(chooser.uniform(*gap_s))
                pids = [p for p in backend.pids if p]
                seen.update(pids)
                if not pids:
                    continue
                pid = chooser.choice(pids)
                if not _alive(pid):
                    continue
                record["busy" if _running(pid) else "idle"] += 1
                os.kill(pid, signal.SIGKILL)

        began = time.perf_counter()
        trainer.begin()  # the warm start runs before the first kill
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        after = None
        metrics: dict[str, float] = {}
        try:
            while True:
                metrics = trainer.train_iteration()
                seen.update(p for p in backend.pids if p)
                if sum(record.values()) >= kills and after is None:
                    after = trainer.iteration
                if after is not None and trainer.iteration >= after + 2:
                    break
        finally:
            done.set()
            thread.join()
            trainer.finish()
        seconds = time.perf_counter() - began
        time.sleep(1.0)  # let the kernel reap what close() stopped
        orphans = sorted(pid for pid in seen if _alive(pid))
    return {"kills": sum(record.values()), "kills_idle": record["idle"], "kills_busy": record["busy"],
            "restarts": int(backend.restarts), "groups_dropped": metrics.get("groups/dropped_service_failure", 0.0),
            "iterations": trainer.iteration, "seconds": round(seconds, 1), "restart_lines": len(lines),
            "example_line": lines[0] if lines else None, "orphans": orphans}


def hang_recovery() -> dict:
    """Seconds from SIGSTOP of a service to the run going on: during a step, and while idle (heartbeat)."""
    config = env_config_from_dict({"num_services": 2})
    backend = build_backend(config, num_worlds=8)
    out = {}
    try:
        backend.reset(0)
        zeros = torch.zeros(8, 3)
        for _ in range(40):
            backend.step(zeros)
        out["step_deadline_s"] = round(backend.deadline("step"), 2)
        os.kill(backend.pids[1], signal.SIGSTOP)
        began = time.perf_counter()
        result = backend.step(zeros)
        out["busy_recovery_s"] = round(time.perf_counter() - began, 2)
        out["busy_worlds_reported_failed"] = int(result.info["service_failed"].sum())
        restarts = backend.restarts
        os.kill(backend.pids[0], signal.SIGSTOP)
        began = time.perf_counter()
        while backend.restarts == restarts and time.perf_counter() - began < 120:
            time.sleep(0.05)
        out["idle_recovery_s"] = round(time.perf_counter() - began, 2)
        out["restarts"] = backend.restarts
        out["heartbeat_s"] = backend.heartbeat_s
        out["hang_timeout_min_s"] = backend.hang_timeout_min_s
    finally:
        backend.close()
    return out


def fuzz(flips: int = 1000, seed: int = 0) -> dict:
    """Single-byte changes of a busy-world snapshot: refused, silent, or another exception."""
    from envs.sim.config import SimConfig
    from envs.sim.world import DrivingSim

    sim = DrivingSim(SimConfig(num_worlds=8, num_towns=2))
    sim.reset(0)
    for _ in range(20):
        sim.step(torch.tensor([[0.5, 0.0, 0.0]]).repeat(8, 1))
    snapshot = sim.snapshot()
    data = snapshot.to_bytes()
    payload = data[len(frame_snapshot_payload(b"")):]  # the torch.save bytes behind header and checksum
    chooser = random.Random(seed)
    out = {"snapshot_bytes": len(data)}
    for name, blob, frame in (("with_checksum", data, lambda b: b),
                              ("payload_without_checksum", payload, frame_snapshot_payload)):
        refused = silent_same = silent_different = other = 0
        for _ in range(flips):
            changed = bytearray(blob)
            changed[chooser.randrange(len(blob))] ^= chooser.randrange(1, 256)
            try:
                back = Snapshot.from_bytes(frame(bytes(changed)))
                sim.restore(back, list(range(8)))
            except BackendError:
                refused += 1
                continue
            except Exception:
                other += 1
                continue
            same = all(torch.equal(back.tensors[k], snapshot.tensors[k]) for k in snapshot.tensors)
            silent_same += same
            silent_different += not same
        out[name] = {"flips": flips, "refused": refused, "restored_unchanged": silent_same,
                     "restored_different_world": silent_different, "other_exception": other}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--name", default="faults")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result["kills"] = kill_during_training(args.kills)
    print("kills:", json.dumps(result["kills"]), flush=True)
    result["hang"] = hang_recovery()
    print("hang:", json.dumps(result["hang"]), flush=True)
    result["fuzz"] = fuzz(args.flips)
    print("fuzz:", json.dumps(result["fuzz"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
