"""Train a driving policy with GRPO by branching the world.

    python train.py                                  # built-in simulator
    python train.py env.num_services=4 grpo.group_size=16
    python train.py experiment=smoke                 # the whole loop in under a minute
    python train.py -m grpo.group_size=4,8           # a sweep
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.typed_config import ConfigError
from grpo.config import train_config_from_dict
from grpo.trainer import Trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        config = train_config_from_dict(OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    metrics = Trainer(config).train()
    return metrics.get("eval/driving_score", float("nan"))


if __name__ == "__main__":
    main()
