"""Imitation benchmark: how well a policy class can drive like the expert, by cloning it (no GRPO).

    python bench/imitation.py                                   # the default policy and warm start
    python bench/imitation.py --name mlp -- policy=mlp          # Hydra overrides after --

Runs the trainer's warm start (DART demonstrations of the privileged expert, then DAgger rounds; the
``pretrain`` section of the config) and evaluates the clone deterministically on ``--routes`` held-out routes,
beside the expert and the random driver on the same routes. The clone's score is the capacity bar of a policy
class: GRPO starts from it. Prints the score with its 95% interval, how the routes ended, and the
infractions per km, and writes ``bench/results/imitation_<name>.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

from common import RESULTS, machine, train_config

from envs.api import INFRACTIONS
from grpo.baselines import build_baseline
from grpo.evaluation import evaluate_policy
from grpo.trainer import Trainer


def summary(name: str, result) -> dict:
    """The figures the benchmark reports for one driver: score, interval, outcomes, infractions per km."""
    metrics = result.metrics
    outcomes = collections.Counter(route["outcome"] for route in result.routes)
    line = {"driving_score": metrics["eval/driving_score"], "driving_score_ci95": metrics["eval/driving_score_ci95"],
            "route_completion": metrics["eval/route_completion"], "success_rate": metrics["eval/success_rate"],
            "infraction_penalty": metrics["eval/infraction_penalty"], "mean_speed": metrics["eval/mean_speed"],
            "outcomes": dict(outcomes),
            "per_km": {infraction: metrics[f"eval/{infraction}_per_km"] for infraction in INFRACTIONS}}
    per_km = ", ".join(f"{k} {v:.2f}" for k, v in line["per_km"].items() if v > 0) or "none"
    print(f"{name:>8}: driving score {line['driving_score']:5.1f} +- {line['driving_score_ci95']:4.1f}  completion "
          f"{line['route_completion']:5.1f}  success {line['success_rate']:.2f}  speed {line['mean_speed']:.1f} m/s\n"
          f"{'':>10}ended: {dict(outcomes)}\n{'':>10}per km: {per_km}", flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=64, help="held-out evaluation routes")
    parser.add_argument("--name", default="default")
    parser.add_argument("--no-references", action="store_true", help="skip the expert and random reference runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. policy=mlp pretrain.dagger_rounds=8")
    args = parser.parse_args()

    config = train_config(args.overrides, before=[
        f"run_name=imitation-{args.name}", "logger.wandb.mode=disabled", "logger.tensorboard=false",
        "logger.progress_bar=false"], after=[
        f"eval.num_routes={args.routes}", "eval.seed=0", "eval.deterministic=true", "eval.max_steps=null"])
    if config.pretrain.updates == 0:
        parser.error("pretrain.updates is 0: there is no clone to measure")

    result = {"machine": machine(config.device), "config": config.to_dict(), "routes": args.routes, "references": {},
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.no_references:
        for name in ("expert", "random"):
            reference = evaluate_policy(build_baseline(name), config.env, config.eval, config.device)
            result["references"][name] = summary(name, reference)

    trainer = Trainer(config)
    try:
        start = time.perf_counter()
        result["pretrain"] = trainer.pretrain()
        result["pretrain_s"] = time.perf_counter() - start
        trainer.policy.eval()
        result["clone"] = summary("clone", evaluate_policy(trainer.policy, config.env, config.eval, trainer.device))
    finally:
        trainer.finish()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"imitation_{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"clone: {result['clone']['driving_score']:.1f} +- {result['clone']['driving_score_ci95']:.1f} after "
          f"{result['pretrain_s']:.0f} s of cloning; written to {out}")


if __name__ == "__main__":
    main()
