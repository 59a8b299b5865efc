"""Building backends from the flat env config; the YAML and the dataclasses stay in step."""

from pathlib import Path

import pytest
import yaml

from envs.factory import ServiceConfig, build_backend, env_config_from_dict
from envs.sim.config import SimConfig
from envs.typed_config import ConfigError, to_dict

CONF = Path(__file__).parents[2] / "conf"


def test_sim_yaml_matches_the_dataclass_defaults_key_for_key():
    data = yaml.safe_load((CONF / "env" / "sim.yaml").read_text())
    config = env_config_from_dict(data)
    # Every field is in the YAML (users see and can override all of them) with the documented default.
    assert config.to_flat_dict() == {"backend": "sim", **to_dict(ServiceConfig()), **to_dict(SimConfig())}


def test_flat_dict_round_trip():
    config = env_config_from_dict({"num_services": 2, "map": "straight", "town": {"num_routes": 4}})
    assert env_config_from_dict(config.to_flat_dict()) == config
    assert config.services.num_services == 2 and config.backend_config.town.num_routes == 4


@pytest.mark.parametrize("data,message", [
    ({"backend": "mujoco"}, "env.backend must be one of"),
    ({"num_services": 0}, "num_services must be >= 1"),
    ({"worlds_per_service": 0}, "worlds_per_service must be >= 1"),
    ({"num_wrlds": 3}, "did you mean env.num_worlds"),
    ({"town": {"grid_size": 1}}, "grid_size"),
])
def test_bad_env_config(data, message):
    with pytest.raises(ConfigError, match=message):
        env_config_from_dict(data)


def test_build_backend_sets_worlds_and_split():
    config = env_config_from_dict({"map": "straight", "num_towns": 2})
    sim = build_backend(config, num_worlds=3, split="eval")
    assert sim.num_worlds == 3 and sim.config.split == "eval"


def test_capacity_caps_worlds_only_when_asked():
    assert env_config_from_dict({}).capacity(64) == 64
    assert env_config_from_dict({"num_services": 4, "worlds_per_service": 2}).capacity(64) == 8
    assert env_config_from_dict({"num_services": 4, "worlds_per_service": 32}).capacity(64) == 64
