"""Learning benchmark: driving score on held-out routes versus wall-clock training time.

    python bench/learning.py                           # the default config, 30 minutes
    python bench/learning.py --minutes 5 --eval-every-s 60 -- grpo.num_trunks=16   # Hydra overrides after --
    python bench/learning.py --minutes 15 --eval-every-s 180 --name gpu -- experiment=gpu eval.device=cpu

Trains with the default config (plus any overrides) and, every ``--eval-every-s`` seconds of training,
evaluates the policy deterministically on ``--routes`` (64) held-out routes (on ``eval.device``: 64 worlds step
faster on the host's CPU than on a GPU, where the step is launch-bound). Evaluation time is not counted as
training time; the warm start (``pretrain.updates > 0``), when on, is. Training stops at the time budget or
at ``grpo.iterations``, whichever comes first (the learning-rate schedule runs over ``grpo.iterations``, as in
``train.py``). The random driver and the expert are evaluated once on the same routes as reference lines.

The figure it reports is the **mean of the last three evaluations**, never the best: each route's score is
averaged over the three, and the 95% interval is over routes (1.96 x std / sqrt(routes)). It also prints how
the final evaluation's routes ended and its infractions per km, which says where the score is lost.

Writes ``bench/results/learning_<name>.json`` and a PNG curve beside it (matplotlib, from the bench extra), and
the policy as checkpoints ``checkpoints/learning-<name>/best.pt`` (best evaluation) and ``last.pt``, which
``evaluate.py checkpoint=...`` drives.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from common import RESULTS, machine, train_config

from envs.api import INFRACTIONS
from grpo.baselines import build_baseline
from grpo.checkpoint import save_checkpoint
from grpo.eval_metrics import ci95
from grpo.evaluation import evaluate_policy
from grpo.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    parser.add_argument("--eval-every-s", type=float, default=120.0)
    parser.add_argument("--routes", type=int, default=64, help="held-out evaluation routes")
    parser.add_argument("--name", default="default")
    parser.add_argument("--no-references", action="store_true", help="skip the expert and random reference runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. grpo.group_size=16")
    args = parser.parse_args()

    config = train_config(args.overrides, before=[
        f"run_name=learning-{args.name}", "logger.wandb.mode=disabled", "logger.progress_bar=false", "eval.every=0",
        "checkpoint.every=1000000", "eval.device=null"], after=[
        # the held-out suite: the trainer's own evaluation (which keeps best.pt) runs on it
        f"eval.num_routes={args.routes}", "eval.seed=0", "eval.deterministic=true", "eval.max_steps=null"])
    suite = config.eval

    references = {}
    for name in () if args.no_references else ("random", "expert"):
        references[name] = evaluate_policy(build_baseline(name), config.env, suite, config.device).metrics
        print(f"{name:>7}: driving score {references[name]['eval/driving_score']:.1f}", flush=True)

    trainer = Trainer(config)
    curve, route_scores, last = [], [], None
    RESULTS.mkdir(parents=True, exist_ok=True)

    def record(training_seconds: float) -> None:
        nonlocal last
        if trainer.rollout.trunks is None:  # before training: nothing to checkpoint yet
            trainer.policy.eval()
            last = evaluate_policy(trainer.policy, config.env, suite, trainer.device)
        else:
            trainer.evaluate()  # best.pt follows the score, as in train.py
            last = trainer.last_evaluation
        metrics = last.metrics
        route_scores.append([route["driving_score"] for route in last.routes])
        curve.append({"training_s": training_seconds, "iteration": trainer.iteration,
                      "env_steps": trainer.rollout.env_steps, **metrics})
        (RESULTS / f"learning_{args.name}.partial.json").write_text(json.dumps({"curve": curve}, indent=2))
        print(f"{training_seconds / 60:6.1f} min  it {trainer.iteration:5d}  driving score "
              f"{metrics['eval/driving_score']:5.1f} +- {metrics['eval/driving_score_ci95']:4.1f}  completion "
              f"{metrics['eval/route_completion']:5.1f}  success {metrics['eval/success_rate']:.2f}  "
              f"infractions/km {metrics['eval/infractions_per_km']:.2f}", flush=True)

    record(0.0)  # the untrained policy
    try:
        start = time.perf_counter()
        trainer.begin()  # the warm start (behaviour cloning), if on, counts as training time
        training_seconds = time.perf_counter() - start
        next_eval = 0.0 if config.pretrain.updates else args.eval_every_s  # the cloned policy's score, if cloned
        while training_seconds < 60 * args.minutes and trainer.iteration < config.grpo.iterations:
            if training_seconds >= next_eval:
                record(training_seconds)
                next_eval = training_seconds + args.eval_every_s  # not a burst of catch-up evaluations
            start = time.perf_counter()
            trainer.train_iteration()
            training_seconds += time.perf_counter() - start
        record(training_seconds)
        save_checkpoint(trainer.state_dict(), trainer.checkpoints.last)
    finally:
        trainer.finish()

    # the figure: each route's score averaged over the last three evaluations, interval over routes
    per_route = torch.tensor(route_scores[-3:], dtype=torch.float64).mean(0)
    final = {"driving_score": per_route.mean().item(), "driving_score_ci95": ci95(per_route),
             "evaluations": min(3, len(route_scores)),
             "outcomes": dict(collections.Counter(route["outcome"] for route in last.routes)),
             "per_km": {name: last.metrics[f"eval/{name}_per_km"] for name in INFRACTIONS},
             "route_completion": last.metrics["eval/route_completion"],
             "infraction_penalty": last.metrics["eval/infraction_penalty"]}
    result = {"machine": machine(config.device), "config": config.to_dict(), "budget_minutes": args.minutes,
              "routes": args.routes, "final": final, "curve": curve, "references": references,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"learning_{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    (RESULTS / f"learning_{args.name}.partial.json").unlink(missing_ok=True)
    plot(result, out.with_suffix(".png"))
    per_km = ", ".join(f"{name} {value:.2f}" for name, value in final["per_km"].items() if value > 0) or "none"
    shown = "".join(f"; {name} {metrics['eval/driving_score']:.1f}" for name, metrics in references.items())
    print(f"driving score {final['driving_score']:.1f} +- {final['driving_score_ci95']:.1f} (mean of the last "
          f"{final['evaluations']} evaluations on {args.routes} routes{shown})\nlast evaluation: routes ended "
          f"{final['outcomes']}; per km: {per_km}\nwritten to {out}")


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]); skipping the PNG")
        return
    minutes = [p["training_s"] / 60 for p in result["curve"]]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(minutes, [p["eval/driving_score"] for p in result["curve"]], marker="o", label="GRPO policy")
    colours = {"expert": "tab:green", "random": "tab:red"}
    for name, metrics in result["references"].items():
        axis.axhline(metrics["eval/driving_score"], linestyle="--", color=colours[name], label=name)
    axis.set_xlabel("training wall-clock (minutes)")
    axis.set_ylabel(f"driving score ({result['routes']} held-out routes)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"Learning on {result['machine']['processor']}, {result['machine']['threads']} threads")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
