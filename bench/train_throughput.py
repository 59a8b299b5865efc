"""Training throughput: env-steps per second of real GRPO iterations, and where their time goes.

    python bench/train_throughput.py                                  # the default config (CPU)
    python bench/train_throughput.py --iterations 5 -- experiment=gpu # Hydra overrides after --

Builds the trainer exactly as ``train.py`` does (no warm start, no evaluation, no checkpoints, no logs: GRPO
iterations only), runs ``--warmup`` iterations, then times ``--iterations`` more twice:

1. **Throughput**, untouched: env-steps per second of whole iterations (trunks, branches, advantages and the
   update), and of the rollout alone (the trainer's ``perf/env_steps_per_s``).
2. **Shares**, with every backend call timed (on CUDA each timed call synchronises, so this pass runs a little
   slower than the first): the time in the simulator (reset, step, observe, snapshot, restore, clone), in the
   rest of the rollout (the policy's forward pass and sampling, buffers, held actions), in the update, and
   elsewhere (advantages, branch selection).

Then it steps the same backend on its own, all its worlds at once with the rule-based expert's actions (computed
outside the timed region), for the raw simulator rate at the same number of worlds; the ratio says what the
training loop keeps of it. Writes ``bench/results/train_throughput_<device>[_<name>].json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import RESULTS, machine, train_config

from envs.driving.expert import ExpertDriver
from grpo.trainer import Trainer

TIMED_CALLS = ("reset", "step", "observe", "observe_raster", "snapshot", "restore", "clone")


class TimedBackend:
    """A backend whose contract calls are timed into ``seconds``; everything else passes through."""

    def __init__(self, backend, seconds: defaultdict):
        self._backend, self._seconds = backend, seconds

    def __getattr__(self, name: str):
        attribute = getattr(self._backend, name)
        if name not in TIMED_CALLS or not callable(attribute):
            return attribute

        def timed(*args, **kwargs):
            synchronise(self._backend.device)
            start = time.perf_counter()
            out = attribute(*args, **kwargs)
            synchronise(self._backend.device)
            self._seconds["simulation"] += time.perf_counter() - start
            return out

        return timed


def synchronise(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_iterations(trainer: Trainer, count: int) -> tuple[float, int, dict[str, float]]:
    """Wall seconds, env-steps and the trainer's own timers (summed) over ``count`` iterations."""
    timers: dict[str, float] = defaultdict(float)
    steps_before = trainer.rollout.env_steps
    synchronise(trainer.device)
    start = time.perf_counter()
    for _ in range(count):
        metrics = trainer.train_iteration()
        for key, value in metrics.items():
            if key.startswith("time/"):
                timers[key.removeprefix("time/").removesuffix("_s")] += value
    synchronise(trainer.device)
    return time.perf_counter() - start, trainer.rollout.env_steps - steps_before, dict(timers)


def raw_simulator_rate(backend, steps: int) -> float:
    """World-steps per second of the backend stepped on its own: all worlds, the expert's actions."""
    expert = ExpertDriver()
    obs = backend.reset(list(range(backend.num_worlds)))
    total = 0.0
    for _ in range(steps):
        actions = expert(obs)
        synchronise(backend.device)
        start = time.perf_counter()
        result = backend.step(actions)
        synchronise(backend.device)
        total += time.perf_counter() - start
        obs = result.observation
        done = (result.terminated | result.truncated).nonzero().flatten()
        if len(done):
            obs[done] = backend.reset(done.tolist(), done)
    return backend.num_worlds * steps / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per pass")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--sim-steps", type=int, default=30, help="steps of the raw simulator measurement")
    parser.add_argument("--name", default="")
    parser.add_argument("--out", help="the JSON file (default bench/results/train_throughput_<device>[_<name>].json)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. grpo.num_trunks=64")
    args = parser.parse_args()
    config = train_config(args.overrides, before=["pretrain.updates=0"], after=[
        "run_name=train-throughput", "logger.wandb.mode=disabled", "logger.tensorboard=false",
        "logger.progress_bar=false", "logger.picture_every=0", "eval.every=0", "checkpoint.every=1000000",
        "resume=null"])

    trainer = Trainer(config)
    try:
        trainer.begin()
        print(f"{config.grpo.num_trunks} trunks x {config.grpo.group_size} branches on {config.env.backend} "
              f"({trainer.backend.num_worlds} worlds, device {config.device}); {args.warmup} warm-up iteration(s)",
              flush=True)
        run_iterations(trainer, args.warmup)
        wall, steps, timers = run_iterations(trainer, args.iterations)
        rollout = timers["trunks"] + timers["branch"]
        print(f"throughput: {steps / wall:,.0f} env-steps/s over whole iterations, {steps / rollout:,.0f} in the "
              f"rollout ({args.iterations} iterations, {wall:.1f} s)", flush=True)

        seconds: defaultdict = defaultdict(float)
        trainer.rollout.backend = TimedBackend(trainer.backend, seconds)
        shares_wall, _, shares_timers = run_iterations(trainer, args.iterations)
        trainer.rollout.backend = trainer.backend
        shares_rollout = shares_timers["trunks"] + shares_timers["branch"]
        parts = {"simulation": seconds["simulation"], "policy and rollout": shares_rollout - seconds["simulation"],
                 "update": shares_timers["update"]}
        parts["other"] = shares_wall - sum(parts.values())
        shares = {name: value / shares_wall for name, value in parts.items()}
        raw = raw_simulator_rate(trainer.backend, args.sim_steps)
    finally:
        trainer.finish()

    result = {"machine": machine(config.device), "config": config.to_dict(), "worlds": trainer.backend.num_worlds,
              "iterations": args.iterations, "env_steps": steps, "seconds": wall,
              "env_steps_per_s": steps / wall, "rollout_env_steps_per_s": steps / rollout,
              "shares": shares, "raw_simulator_world_steps_per_s": raw,
              "fraction_of_raw_simulator": (steps / wall) / raw, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    suffix = "_".join(filter(None, (config.device.split(":")[0], args.name)))
    out = Path(args.out) if args.out else RESULTS / f"train_throughput_{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n| measure | value |\n|---|---:|")
    print(f"| env-steps/s, whole iterations | {result['env_steps_per_s']:,.0f} |")
    print(f"| env-steps/s, rollout only | {result['rollout_env_steps_per_s']:,.0f} |")
    print(f"| raw simulator, {result['worlds']:,} worlds | {raw:,.0f} world-steps/s |")
    print(f"| training / raw simulator | {result['fraction_of_raw_simulator']:.0%} |")
    for name, share in shares.items():
        print(f"| share of time: {name} | {share:.0%} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
