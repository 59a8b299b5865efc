"""Evaluate a saved policy on held-out routes, beside the expert and a random driver, and write a report.

    python evaluate.py checkpoint=checkpoints/<run>/last.pt
    python evaluate.py checkpoint=checkpoints/<run>/best.pt eval.num_routes=128 eval.device=cuda
    python evaluate.py checkpoint=... env.traffic.num_vehicles=0 eval.baselines=[expert] eval.log_run=true

The policy and its environment come from the checkpoint alone; the report (JSON, CSV, markdown, PNG, GIF)
goes to eval.output_dir (default <checkpoint folder>/eval_<checkpoint name>) and the summary table to the
terminal.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grpo.checkpoint_eval import evaluate_checkpoint, evaluate_config_from_dict
from grpo.cli import one_line_errors
from grpo.report import log_to_run, summary_table, write_report


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    data = OmegaConf.to_container(cfg, resolve=True)
    with one_line_errors():  # config, checkpoint and backend errors: one line, exit status 1
        config = evaluate_config_from_dict(data, HydraConfig.get().overrides.task)
        evaluation = evaluate_checkpoint(config)
        for notice in evaluation.notices:
            print(notice)
        summary = write_report(evaluation.results, config.output_dir(), context=evaluation.context())
        print(summary_table(evaluation.results))
        episodes = "evaluation episodes" if evaluation.env.backend == "gym" else "held-out routes"
        print(f"\n{evaluation.suite.num_routes} {episodes}; report in {summary.parent}")
        if config.report.log_run:
            for notice in log_to_run(evaluation, summary.parent):
                print(notice)
    return evaluation.results["policy"].metrics["eval/driving_score"]


if __name__ == "__main__":
    main()
