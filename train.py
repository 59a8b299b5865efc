"""Train a driving policy with GRPO by branching the world.  Usage: python train.py [overrides]"""

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.factory import build_backend, env_config_from_dict


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    env_config = env_config_from_dict(OmegaConf.to_container(cfg.env, resolve=True))
    backend = build_backend(env_config)
    observations = backend.reset(cfg.seed)
    print(f"built {env_config.backend} backend: {backend.num_worlds} worlds, observation size "
          f"{observations.shape[1]}, device {backend.device}")
    backend.close()


if __name__ == "__main__":
    main()
