"""Simulator throughput: world-steps per second and the cost of snapshot / restore / clone, per batch size.

    python bench/sim_throughput.py                        # CPU, the default busy world, B in 1 64 1024 4096 8192
    python bench/sim_throughput.py --device cuda --batch-sizes 1024 4096 16384 65536
    python bench/sim_throughput.py --world empty          # no traffic, pedestrians or lights (the old road-only world)
    python bench/sim_throughput.py --world busy-unshaped  # the busy world without the reward's obstacle shaping
    python bench/sim_throughput.py --raster               # also time the bird's-eye raster observation

Runs from the repository root with ``PYTHONPATH=.`` and needs only torch (highway-env and gymnasium are
optional). Writes ``bench/results/sim_throughput_<device>[_<world>].json`` and prints a markdown table. When
highway-env is installed (``pip install -e .[bench]``) it also measures ``highway-fast-v0`` with continuous
actions on the same machine and prints the ratio, both per step and per simulated second (a highway-env
step covers 1 / policy_frequency seconds, ours ``dt``).

The **busy** world is the default configuration (conf/env/sim.yaml): 10 traffic vehicles, 4 pedestrian
slots and traffic lights per world, and the reward's obstacle shaping (``reward.obstacle_decel``), which reads
the expert's obstacle in the way every step. Throughput is given from the mean step time (the world spawns on every
5th of its steps, so steps differ) and from the median (robust to a step preempted by another process);
both are stored. The ego is driven by the rule-based expert, computed outside the timed region, so the
worlds drive realistically; worlds that end are reset between timed steps (reset cost is reported
separately).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from envs.driving.config import RewardConfig
from envs.driving.expert import ExpertDriver
from envs.sim.config import LightConfig, PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.world import DrivingSim

RESULTS = Path(__file__).parent / "results"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


WORLDS = {
    "busy": {},
    "empty": {"traffic": TrafficConfig(num_vehicles=0), "pedestrians": PedestrianConfig(num_pedestrians=0),
              "lights": LightConfig(enabled=False)},
    # the busy world without the reward's obstacle shaping (env.reward.obstacle_decel=0), to show its cost
    "busy-unshaped": {"reward": RewardConfig(obstacle_decel=0.0)},
}


def measure_sim(num_worlds: int, device: str, steps: int, seed: int = 0, world: str = "busy",
                raster: bool = False) -> dict:
    sim = DrivingSim(SimConfig(num_worlds=num_worlds, device=device, **WORLDS[world]))
    expert = ExpertDriver(vehicle=sim.config.vehicle)
    dev = sim.device
    obs = sim.reset(seed)
    step_times, reset_seconds, resets = [], 0.0, 0
    for step in range(steps + 5):
        actions = expert(obs)
        synchronise(dev)
        start = time.perf_counter()
        result = sim.step(actions)
        synchronise(dev)
        if step >= 5:  # the first steps warm up allocators and kernels
            step_times.append(time.perf_counter() - start)
        obs = result.observation
        done = (result.terminated | result.truncated).nonzero().flatten()
        if len(done):
            start = time.perf_counter()
            obs[done] = sim.reset(seed + step + 1, done)
            reset_seconds += time.perf_counter() - start
            resets += len(done)
    clone_count = min(num_worlds, 1024)
    src = torch.randint(0, num_worlds, (clone_count,), generator=torch.Generator().manual_seed(0)).to(dev)
    dst = torch.randperm(num_worlds, generator=torch.Generator().manual_seed(1))[:clone_count].to(dev)
    repeats = 50
    snapshot = sim.snapshot()
    median = sorted(step_times)[len(step_times) // 2]
    mean = sum(step_times) / len(step_times)
    row = {
        "num_worlds": num_worlds,
        "world": world,
        "step_ms": 1e3 * median,
        "step_ms_mean": 1e3 * mean,
        "world_steps_per_s": num_worlds / mean,
        "world_steps_per_s_median": num_worlds / median,
        "simulated_s_per_s": num_worlds * sim.config.dt / mean,
        "clone_count": clone_count,
        "clone_us": 1e6 * timed(lambda: sim.clone(src, dst), dev, repeats),
        "snapshot_all_us": 1e6 * timed(lambda: sim.snapshot(), dev, repeats),
        "restore_all_us": 1e6 * timed(lambda: sim.restore(snapshot), dev, repeats),
        "snapshot_bytes_per_world": len(snapshot.to_bytes()) / num_worlds,
        "resets": resets,
        "reset_us_per_world": 1e6 * reset_seconds / max(resets, 1),
    }
    if raster:
        row["raster_ms"] = 1e3 * timed(lambda: sim.observe_raster(), dev, 5)
    return row


def measure_highway(seconds: float) -> dict | None:
    """``highway-fast-v0`` with continuous actions, random policy, single process (skipped: ``seconds`` <= 0)."""
    if seconds <= 0:
        return None
    try:
        import gymnasium as gym
        import highway_env  # noqa: F401  (registers the environments)
    except ImportError:
        return None
    env = gym.make("highway-fast-v0", config={"action": {"type": "ContinuousAction"}})
    env.reset(seed=0)
    env.action_space.seed(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    step_seconds = 1.0 / env.unwrapped.config["policy_frequency"]
    return {"env": "highway-fast-v0", "steps_per_s": steps / elapsed,
            "simulated_s_per_s": steps * step_seconds / elapsed, "step_seconds": step_seconds,
            "highway_env_version": getattr(highway_env, "__version__", "unknown")}


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": torch.get_num_threads(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024, 4096, 8192])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per batch size")
    parser.add_argument("--world", choices=sorted(WORLDS), default="busy",
                        help="busy: the default config (traffic, pedestrians, lights); empty: the road only")
    parser.add_argument("--raster", action="store_true", help="also time observe_raster() for all worlds")
    parser.add_argument("--highway-seconds", type=float, default=5.0, help="0 skips highway-env")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    for num_worlds in args.batch_sizes:
        row = measure_sim(num_worlds, args.device, args.steps, world=args.world, raster=args.raster)
        rows.append(row)
        print(f"B={num_worlds:>6}: {row['world_steps_per_s']:>12,.0f} world-steps/s (mean step), "
              f"clone {row['clone_count']} in {row['clone_us']:.0f} us", flush=True)
    highway = measure_highway(args.highway_seconds)
    result = {"machine": machine(args.device), "world": args.world, "sim": rows, "highway_env": highway,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if highway:
        best = max(rows, key=lambda r: r["world_steps_per_s"])
        result["ratio_vs_highway"] = {
            "num_worlds": best["num_worlds"],
            "steps": best["world_steps_per_s"] / highway["steps_per_s"],
            "simulated_time": best["simulated_s_per_s"] / highway["simulated_s_per_s"],
        }
    suffix = "" if args.world == "busy" else f"_{args.world}"
    out = args.out or RESULTS / f"sim_throughput_{args.device.replace(':', '')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"written to {out}")


def format_table(result: dict) -> str:
    raster = any("raster_ms" in r for r in result["sim"])
    lines = [f"Machine: {result['machine']}", f"World: {result.get('world', 'busy')}", "",
             "| B | step ms (median / mean) | world-steps/s (mean / median) | sim-s per s | clone (us) "
             "| snapshot all (us) | restore all (us) |" + (" raster (ms) |" if raster else ""),
             "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if raster else "")]
    for r in result["sim"]:
        lines.append(f"| {r['num_worlds']} | {r['step_ms']:.2f} / {r['step_ms_mean']:.2f} | "
                     f"{r['world_steps_per_s']:,.0f} / {r['world_steps_per_s_median']:,.0f} | "
                     f"{r['simulated_s_per_s']:,.0f} | {r['clone_us']:.0f} ({r['clone_count']} worlds) | "
                     f"{r['snapshot_all_us']:.0f} | {r['restore_all_us']:.0f} |"
                     + (f" {r.get('raster_ms', float('nan')):.1f} |" if raster else ""))
    highway = result.get("highway_env")
    if highway:
        ratio = result["ratio_vs_highway"]
        lines += ["", f"highway-fast-v0 (continuous actions, {highway['step_seconds']:.1f} s per step): "
                      f"{highway['steps_per_s']:,.1f} steps/s = {highway['simulated_s_per_s']:,.1f} sim-s/s",
                  f"ratio at B={ratio['num_worlds']}: {ratio['steps']:,.0f}x per step, "
                  f"{ratio['simulated_time']:,.0f}x per simulated second"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
