"""Services benchmark: training-time rollout throughput per number of services, and the cost of moving a
snapshot between services, over each transport (pipes to local processes, Ray actors, HTTP servers).

    python bench/services.py                      # 1 and 2 services (this 2-core machine)
    python bench/services.py --services 1 4 8 16  # a 16-core machine
    python bench/services.py --transports local ray http --services 1 2   # the transports side by side

For each count, the default GRPO rollout (32 trunks x 8 branches x 30 steps, the default MLP policy acting on
CPU) runs ``--iterations`` iterations of restore -> branches -> snapshot -> selection, and the environment
steps per second are reported (median iteration). One service means the in-process simulator (no
serialisation); more means worker processes. The snapshot rows time one world's snapshot on service 0,
restored into a world of the same service and of another one. ``local`` with one service is the in-process
simulator; ``ray`` and ``http`` always go through their transport (Ray actors; world servers launched on the
loopback, ``env=http``). Writes ``bench/results/services_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from envs.factory import build_backend, env_config_from_dict
from grpo.config import GRPOConfig
from grpo.distributions import action_mapping_for
from grpo.policy import PolicyConfig, build_policy
from grpo.rollout import BranchingRollout, select_branches

RESULTS = Path(__file__).resolve().parent / "results"


def env_for(transport: str, num_services: int, env_overrides: dict):
    """The env config of ``num_services`` services over ``transport``: local | ray | http."""
    if transport == "http":
        return env_config_from_dict({"backend": "http", "num_services": num_services, "serve_env": env_overrides})
    if transport not in ("local", "ray"):
        raise ValueError(f"--transports takes local, ray or http, got {transport!r}")
    return env_config_from_dict({**env_overrides, "num_services": num_services, "launcher": transport})


def measure(num_services: int, iterations: int, env_overrides: dict, transport: str = "local") -> dict:
    grpo = GRPOConfig()
    env = env_for(transport, num_services, env_overrides)
    started = time.perf_counter()
    backend = build_backend(env, num_worlds=grpo.num_trunks * grpo.group_size)
    start_s = time.perf_counter() - started
    try:
        policy = build_policy(backend.observation_size, PolicyConfig(), action_mapping_for(backend))
        generator = torch.Generator().manual_seed(0)
        rollout = BranchingRollout(backend, policy, grpo, seed=0, device=torch.device("cpu"), generator=generator)
        rollout.start()
        times = []
        for _ in range(iterations + 1):  # the first iteration warms up
            begin = time.perf_counter()
            batch = rollout.drive_branches()
            returns = batch.rewards.double().sum(0)
            rollout.continue_from(select_branches(returns, grpo.group_size, "softmax", 1.0, generator))
            rollout.restart_ended_trunks()
            times.append(time.perf_counter() - begin)
        median = sorted(times[1:])[len(times[1:]) // 2]
        steps = grpo.num_trunks * grpo.group_size * grpo.branch_horizon
        row = {"transport": transport, "num_services": num_services, "start_s": start_s, "iteration_s": median,
               "env_steps_per_s": steps / median}
        if num_services > 1 or transport != "local":
            row.update(snapshot_transfer(backend, num_services > 1))
        return row
    finally:
        backend.close()


def snapshot_transfer(backend, across: bool, repeats: int = 20) -> dict:
    """One world: snapshot on service 0, restore into the same service and (``across``) into the last one."""
    same, other = 1, backend.num_worlds - 1
    def timed(fn):
        fn()
        begin = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e3 * (time.perf_counter() - begin) / repeats

    snapshot = backend.snapshot([0])
    row = {"snapshot_ms": timed(lambda: backend.snapshot([0])),
           "restore_same_service_ms": timed(lambda: backend.restore(snapshot, [same])),
           "snapshot_bytes": len(snapshot.to_bytes())}
    if across:
        row["restore_other_service_ms"] = timed(lambda: backend.restore(snapshot, [other]))
        row["clone_across_services_ms"] = timed(lambda: backend.clone([0], [other]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--transports", nargs="+", default=["local"], help="local (pipes), ray, http")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--name", default=None, help="results file suffix (default: <cpu count>cpu)")
    parser.add_argument("--map", default="procedural")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the policy; each service sets its own
    rows = []
    for transport in args.transports:
        for count in args.services:
            row = measure(count, args.iterations, {"map": args.map}, transport)
            rows.append(row)
            extra = (f", snapshot {row['snapshot_ms']:.2f} ms, restore {row['restore_same_service_ms']:.2f} ms"
                     if "snapshot_ms" in row else "")
            if "restore_other_service_ms" in row:
                extra += f", restore elsewhere {row['restore_other_service_ms']:.2f} ms"
            print(f"{transport:>5} {count:>3} services: {row['env_steps_per_s']:>10,.0f} env-steps/s "
                  f"(iteration {row['iteration_s']:.2f} s, start {row['start_s']:.1f} s){extra}", flush=True)
    name = args.name or f"{os.cpu_count()}cpu"
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
              "rollout": {"num_trunks": 32, "group_size": 8, "branch_horizon": 30, "map": args.map},
              "rows": rows, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"services_{name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
