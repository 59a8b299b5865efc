"""Train a driving policy with GRPO by branching the world.

    python train.py                                  # built-in simulator
    python train.py env.num_services=4 grpo.group_size=16
    python train.py experiment=smoke                 # the whole loop in under a minute
    python train.py -m grpo.group_size=4,8           # a sweep
"""

import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grpo.cli import config_help, help_sources, one_line_errors, override_error_line
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


def print_help(overrides: list[str]) -> None:
    """``--help``: every key of the config these overrides compose, with its value and the comment above it."""
    conf = Path(__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra")
    groups = ", ".join(f"{group}=<{'|'.join(sorted(p.stem for p in (conf / group).glob('*.yaml')))}>"
                       for group in sorted(choices) if (conf / group).is_dir())
    print(config_help(data, help_sources(conf, "config", choices),
                      f"python train.py [group=option ...] [key=value ...]\n\nGroups: {groups}\n"
                      "Hydra's own flags: python train.py --hydra-help"))


def check_overrides(overrides: list[str]) -> None:
    """An unknown key, group option or unparsable override: one line naming it and how to fix it (Hydra's own
    message takes six), before anything starts."""
    conf = Path(__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        try:
            compose("config", overrides=overrides)
        except (ConfigCompositionException, MissingConfigException, OverrideParseException) as error:
            known = [key for key, _ in _leaves(OmegaConf.to_container(compose("config"), resolve=False))]
            options = {group.name: sorted(path.stem for path in group.glob("*.yaml"))
                       for group in conf.iterdir() if group.is_dir()}
            sys.exit(override_error_line(str(error), known, options))


def _leaves(node, path: str = ""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, node


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if {"--help", "-h"} & set(arguments):
        print_help([arg for arg in arguments if arg not in ("--help", "-h")])
    else:
        if not arguments or not arguments[0].startswith("-"):  # plain overrides (not a sweep or Hydra flags)
            check_overrides(arguments)
        main()
