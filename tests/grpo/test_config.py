"""Run config: validation with fix-it messages, and the YAML presets matching the dataclasses."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from envs.typed_config import ConfigError, to_dict
from grpo.config import (
    CheckpointConfig,
    EvalConfig,
    GRPOConfig,
    LoggerConfig,
    TrainConfig,
    train_config_from_dict,
)
from grpo.policy import PolicyConfig
from grpo.pretrain import PretrainConfig

CONF = Path(__file__).parents[2] / "conf"


@pytest.mark.parametrize("overrides,message", [
    ({"group_size": 1}, "group_size must be >= 2"),
    ({"num_trunks": 3, "group_size": 2, "num_minibatches": 4}, "must divide evenly"),
    ({"num_minibatches": 1000}, "num_minibatches must be in"),
    ({"train_steps": 40, "branch_horizon": 30}, "train_steps must be null or in"),
    ({"beta": 0.04, "reference": "none"}, "needs a reference policy"),
    ({"discount": 0.0}, "discount must be in"),
    ({"clip_low": 1.0}, "clip_low"),
])
def test_grpo_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_horizon_must_fit_in_an_episode():
    with pytest.raises(ConfigError, match="branch_horizon=50 must be shorter than the episode limit"):
        train_config_from_dict({"grpo": {"branch_horizon": 50}, "env": {"max_episode_steps": 40}})


def test_unknown_and_mistyped_keys_name_the_key():
    with pytest.raises(ConfigError, match="did you mean grpo.group_size"):
        train_config_from_dict({"grpo": {"group_sise": 4}})
    with pytest.raises(ConfigError, match=r"grpo.selection must be one of \['best', 'random', 'softmax'\]"):
        train_config_from_dict({"grpo": {"selection": "greedy"}})


def test_round_trip_through_the_stored_dict():
    config = train_config_from_dict({"seed": 3, "grpo": {"group_size": 4}, "env": {"map": "straight"}})
    assert train_config_from_dict(config.to_dict()) == config


def _yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("path,cls", [
    ("grpo/grpo.yaml", GRPOConfig),
    ("policy/mlp.yaml", PolicyConfig),
    ("logger/default.yaml", LoggerConfig),
])
def test_group_yaml_lists_every_field_with_its_default(path, cls):
    assert _yaml(CONF / path) == to_dict(cls())


def test_top_level_yaml_sections_match():
    data = _yaml(CONF / "config.yaml")
    assert data["eval"] == to_dict(EvalConfig())
    assert data["checkpoint"] == to_dict(CheckpointConfig())
    assert data["pretrain"] == to_dict(PretrainConfig())
    defaults = TrainConfig()
    assert (data["seed"], data["device"], data["resume"], data["deterministic"]) == (
        defaults.seed, defaults.device, defaults.resume, defaults.deterministic)


@pytest.mark.parametrize("preset", ["dr_grpo", "dapo"])
def test_presets_are_valid(preset):
    data = {**_yaml(CONF / "grpo" / "grpo.yaml"), **_yaml(CONF / "grpo" / f"{preset}.yaml")}
    GRPOConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose(config_name="config", overrides=[*overrides, "run_name=t"])
    return train_config_from_dict(OmegaConf.to_container(composed, resolve=True))


def test_the_default_run_is_the_warm_start_recipe():
    # docs/training.md "Warm start": clone first, then GRPO held near the clone by the KL and the obstacle shaping.
    config = _composed()
    assert config.pretrain.updates == 4000 and config.pretrain.dagger_rounds == 6
    assert (config.grpo.learning_rate, config.grpo.beta, config.grpo.reference) == (1e-4, 0.2, "frozen")
    assert config.env.backend_config.reward.obstacle_decel == 3.0


def test_from_scratch_experiment_turns_the_warm_start_off_and_nothing_else():
    config, default = _composed("experiment=from_scratch"), _composed()
    assert config.pretrain.updates == 0
    assert (config.grpo.learning_rate, config.grpo.beta) == (3e-4, 0.0)
    # the default reward, obstacle shaping included (docs/learning.md: 81.2 from scratch with it, 34.7 without)
    assert config.env.backend_config.reward == default.env.backend_config.reward
    assert config.grpo.group_size == default.grpo.group_size and config.policy == default.policy


def test_the_default_policy_reads_the_obstacle_in_the_way_and_entity_is_selectable():
    # bench/imitation.py: the clone reaches 98.6 with the obstacle input and 54.3 without it
    assert _composed().policy.obstacle_features and _composed().policy.kind == "mlp"
    entity = _composed("policy=entity").policy
    assert entity.kind == "entity" and entity.token_layers == 2 and not entity.obstacle_features


def test_gpu_experiment_is_grpo_from_scratch_on_one_cuda_device():
    config = _composed("experiment=gpu")
    assert config.device == "cuda" and config.env.backend_config.device == "cuda"
    assert config.pretrain.updates == 0 and config.grpo.beta == 0.0
    assert config.grpo.num_trunks * config.grpo.group_size == 65536
    assert config.eval.num_routes == 64
