"""Train a driving policy with GRPO by branching the world.

    python train.py                                  # built-in simulator
    python train.py env.num_services=4 grpo.group_size=16
    python train.py experiment=smoke                 # the whole loop in under a minute
    python train.py -m grpo.group_size=4,8           # a sweep
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grpo.cli import one_line_errors
from grpo.config import train_config_from_dict
from grpo.trainer import Trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    data = OmegaConf.to_container(cfg, resolve=True)
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN:  # every job of a sweep gets its own checkpoints and logs
        data["run_name"] = f"{data['run_name']}-{hydra_config.job.num}"
    # config, checkpoint, training and service errors: one line, exit status 1; Ctrl-C: the resume command, 130
    with one_line_errors(list(hydra_config.overrides.task), data.get("run_name")):
        metrics = Trainer(train_config_from_dict(data)).train()
    return metrics.get("eval/driving_score", float("nan"))


if __name__ == "__main__":
    main()
