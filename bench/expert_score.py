"""Driving score of the rule-based expert on held-out evaluation routes, in the default busy world.

    python bench/expert_score.py                       # 256 routes of the eval split, CPU
    python bench/expert_score.py --routes 64 --device cuda

Episode seeds ``seed .. seed + routes - 1`` on ``split=eval`` (towns never used in training), every route
in its own world, all driven at once until each ends. Writes ``bench/results/expert_score.json`` (the
summary of envs.metrics.summarise, the settings, and one record per route) and prints the summary. Runs
from the repository root with ``PYTHONPATH=.`` and needs only torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from envs.driving.expert import ExpertDriver
from envs.metrics import EpisodeAccumulator, summarise
from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim

RESULTS = Path(__file__).parent / "results"


def score(routes: int, seed: int, device: str) -> dict:
    sim = DrivingSim(SimConfig(num_worlds=routes, split="eval", device=device))
    expert = ExpertDriver(vehicle=sim.config.vehicle)
    obs = sim.reset(list(range(seed, seed + routes)))
    metrics = EpisodeAccumulator(routes)
    records = []
    start = time.perf_counter()
    for _ in range(sim.config.max_episode_steps):
        result = sim.step(expert(obs))
        obs = result.observation
        records += metrics.update({k: v.cpu() for k, v in result.info.items()},
                                  (result.terminated | result.truncated).cpu())
        if len(records) == routes:
            break
    records.sort(key=lambda r: r.world)
    return {"summary": summarise(records), "seconds": time.perf_counter() - start,
            "settings": {"routes": routes, "seed": seed, "split": "eval", "device": device,
                         "max_episode_steps": sim.config.max_episode_steps},
            "routes": [dict(dataclasses.asdict(r), episode_seed=seed + r.world) for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="first episode seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "expert_score.json")
    args = parser.parse_args()
    result = score(args.routes, args.seed, args.device)
    result["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    summary = result["summary"]
    print(f"expert on {args.routes} held-out routes: driving score {summary['driving_score']:.2f}, route completion "
          f"{summary['route_completion']:.2f} %, success {100 * summary['success']:.1f} %, "
          f"{summary['infractions_per_km']:.2f} infractions/km over {summary['km_driven']:.1f} km "
          f"({result['seconds']:.0f} s)")
    for key, value in summary.items():
        if key.endswith("_per_km") and value > 0:
            print(f"  {key}: {value:.3f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
