"""Learning benchmark for ``env=gym``: mean episode return on Pendulum-v1 versus wall-clock training time.

    python bench/gym_learning.py                                   # experiment=gym_control, 10 minutes
    python bench/gym_learning.py --minutes 3 --name short -- grpo.branch_horizon=30   # Hydra overrides after --

Trains with ``experiment=gym_control`` (plus any overrides) and, every ``--eval-every-s`` seconds of training,
drives the policy's mode through ``--episodes`` (32) whole evaluation episodes (``env.split=eval``: episode
seeds never used in training, 200 steps each on Pendulum-v1) with the trainer's own evaluation. Evaluation
time is not counted as training time. Training stops at the time budget or at ``grpo.iterations``. Torch runs
on the preset's ``num_threads`` (1), recorded in the JSON.

The figure it reports is the **mean of the last three evaluations**, never the best: each episode's return is
averaged over the three, and the 95% interval is over episodes (1.96 x std / sqrt(episodes)). On Pendulum-v1 the
untrained policy's mode (about zero torque: the pendulum hangs) scores about -1250, a good swing-up controller
about -150.

Writes ``bench/results/gym_learning_<name>.json`` with the machine, the load average at the start and end (the
machine may be shared), the config, the curve and the final figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grpo.config import train_config_from_dict
from grpo.eval_metrics import ci95
from grpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET_RETURN = -300.0  # the mean return issue 17 asks of env=gym on Pendulum-v1 within 10 minutes on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("--eval-every-s", type=float, default=60.0)
    parser.add_argument("--episodes", type=int, default=32, help="evaluation episodes (held-out seeds)")
    parser.add_argument("--experiment", default="gym_control", help="the conf/experiment preset to start from")
    parser.add_argument("--name", default="pendulum")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. grpo.group_size=16")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"experiment={args.experiment}", f"run_name=gym-learning-{args.name}", "logger.wandb.mode=disabled",
            "logger.progress_bar=false", "eval.every=0", "checkpoint.every=1000000", *args.overrides,
            f"eval.num_routes={args.episodes}", "eval.seed=0", "eval.deterministic=true", "eval.max_steps=null"])
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    config = train_config_from_dict(data)
    if config.env.backend != "gym":
        raise SystemExit(f"bench/gym_learning.py measures env=gym; experiment={args.experiment} gives "
                         f"env.backend={config.env.backend}")

    trainer = Trainer(config)
    curve, episode_returns = [], []
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()

    def record(training_seconds: float) -> None:
        trainer.evaluate()
        result = trainer.last_evaluation
        episode_returns.append([route["return"] for route in result.routes])
        metrics = result.metrics
        curve.append({"training_s": training_seconds, "iteration": trainer.iteration,
                      "env_steps": trainer.rollout.env_steps, "return": metrics["eval/return"],
                      "return_ci95": metrics["eval/return_ci95"]})
        (RESULTS / f"gym_learning_{args.name}.partial.json").write_text(json.dumps({"curve": curve}, indent=2))
        print(f"{training_seconds / 60:6.1f} min  it {trainer.iteration:5d}  return {metrics['eval/return']:8.1f} "
              f"+- {metrics['eval/return_ci95']:5.1f}", flush=True)

    try:
        start = time.perf_counter()
        trainer.begin()
        training_seconds = time.perf_counter() - start
        record(0.0)  # the untrained policy
        next_eval = args.eval_every_s
        while training_seconds < 60 * args.minutes and trainer.iteration < config.grpo.iterations:
            start = time.perf_counter()
            trainer.train_iteration()
            training_seconds += time.perf_counter() - start
            if training_seconds >= next_eval:
                record(training_seconds)
                next_eval += args.eval_every_s
        if curve[-1]["iteration"] != trainer.iteration:
            record(training_seconds)
    finally:
        trainer.finish()

    per_episode = torch.tensor(episode_returns[-3:], dtype=torch.float64).mean(0)
    final = {"return": per_episode.mean().item(), "return_ci95": ci95(per_episode),
             "evaluations": min(3, len(episode_returns)), "target": TARGET_RETURN,
             "episode_returns": [round(value, 1) for value in per_episode.tolist()],  # each over the last three
             "reached": bool(per_episode.mean().item() >= TARGET_RETURN),
             "first_minute_at_target": next((p["training_s"] / 60 for p in curve if p["return"] >= TARGET_RETURN),
                                            None)}
    result = {"machine": {"platform": platform.platform(), "processor": platform.machine(),
                          "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_average_start": load_start, "load_average_end": os.getloadavg()},
              "env_id": config.env.backend_config.id, "budget_minutes": args.minutes, "episodes": args.episodes,
              "overrides": args.overrides, "config": config.to_dict(), "final": final, "curve": curve,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = RESULTS / f"gym_learning_{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    (RESULTS / f"gym_learning_{args.name}.partial.json").unlink(missing_ok=True)
    print(f"return {final['return']:.1f} +- {final['return_ci95']:.1f} (mean of the last {final['evaluations']} "
          f"evaluations on {args.episodes} episodes of {result['env_id']}; target {TARGET_RETURN:.0f}: "
          f"{'reached' if final['reached'] else 'not reached'})\nwritten to {out}")


if __name__ == "__main__":
    main()
