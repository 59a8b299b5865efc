"""The CARLA config: YAML == dataclass, validation with fix-it messages, the factory's checks, and that none
of it needs the carla package."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envs.carla.config import CarlaConfig, CarlaTrafficConfig, parse_host
from envs.factory import ServiceConfig, build_backend, env_config_from_dict
from envs.typed_config import ConfigError, to_dict

ROOT = Path(__file__).parents[3]


def test_carla_yaml_matches_the_dataclass_defaults_key_for_key():
    data = yaml.safe_load((ROOT / "conf" / "env" / "carla.yaml").read_text())
    config = env_config_from_dict(data)
    # Every field is in the YAML with the documented default; the service keys are those of sim.yaml, with
    # one world per service (a CARLA server hosts one ego).
    expected = {"backend": "carla", **to_dict(ServiceConfig(worlds_per_service=1)), **to_dict(CarlaConfig())}
    assert config.to_flat_dict() == expected
    sim = yaml.safe_load((ROOT / "conf" / "env" / "sim.yaml").read_text())
    service_keys = [key for key in sim if key in {f.name for f in dataclasses.fields(ServiceConfig)} | {"backend"}]
    assert [key for key in data if key in service_keys] == service_keys  # same keys, same order


def test_flat_dict_round_trip_and_overrides():
    config = env_config_from_dict({"backend": "carla", "num_services": 4, "worlds_per_service": 1,
                                   "town": "Town03", "hosts": ["a:2000", "b:2000"], "traffic": {"num_vehicles": 5}})
    assert env_config_from_dict(config.to_flat_dict()) == config
    backend = config.backend_config
    assert backend.town == "Town03" and backend.hosts == ["a:2000", "b:2000"] and backend.traffic.num_vehicles == 5
    assert backend.dt == backend.fixed_delta_seconds == 0.05


@pytest.mark.parametrize("overrides,message", [
    ({"num_worlds": 0}, "num_worlds must be >= 1"),
    ({"hosts": ["localhost"]}, "host:port"),
    ({"hosts": ["a:2000"], "carla_root": "/opt/carla"}, "either env.hosts .* or env.carla_root"),
    ({"gpus": [-1]}, "CUDA device ids"),
    ({"graphics_adapters": [-1]}, "adapter indices"),
    ({"port": 80}, "env.port must lie in"),
    ({"port_stride": 2}, "port_stride must be >= 3"),
    ({"traffic_manager_port": 2004}, "lies in the RPC port range"),
    ({"fixed_delta_seconds": 0.2}, r"fixed_delta_seconds must lie in \(0, 0.1\]"),
    ({"route_resolution_m": 5.0}, "route_resolution_m must lie in"),
    ({"terminate_on": ("off_road", "speeding")}, "unknown infractions"),
    ({"drift_check_steps": 0}, "drift_check_steps must be >= 1"),
    ({"device": "tpu"}, "env.device"),
])
def test_bad_values_are_refused_with_a_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        CarlaConfig(**overrides)


@pytest.mark.parametrize("overrides,message", [
    ({"num_vehicles": -1}, "num_vehicles must lie in"),
    ({"walker_speed": (2.0, 1.0)}, "walker_speed"),
    ({"speed_difference_percent": 150.0}, "speed_difference_percent"),
])
def test_bad_traffic_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        CarlaTrafficConfig(**overrides)


def test_unknown_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean env.fixed_delta_seconds"):
        env_config_from_dict({"backend": "carla", "fixed_delta_second": 0.05})


def test_parse_host():
    assert parse_host("127.0.0.1:2000") == ("127.0.0.1", 2000)
    assert parse_host("gpu-node-3:3000") == ("gpu-node-3", 3000)
    with pytest.raises(ValueError):
        parse_host("2000")


@pytest.mark.parametrize("data,message", [
    ({"launcher": "ray"}, "env.launcher must be local for env=carla"),
    ({"worlds_per_service": None}, "worlds_per_service must be 1"),
    ({"num_services": 2, "num_worlds": 3}, "need 3 servers"),
])
def test_factory_checks_the_services_before_touching_a_server(data, message):
    config = env_config_from_dict({"backend": "carla", "worlds_per_service": 1, **data})
    with pytest.raises(ConfigError, match=message):
        build_backend(config)


def test_factory_without_carla_root_says_what_to_do(monkeypatch):
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    config = env_config_from_dict({"backend": "carla", "worlds_per_service": 1})
    with pytest.raises(Exception, match="export CARLA_ROOT"):
        build_backend(config)


def test_config_and_modules_import_without_the_carla_package():
    # carla is installed here; hide it the way a machine without the extra would see it.
    code = ("import sys; sys.modules['carla'] = None\n"
            "import envs.factory, envs.carla.backend, envs.carla.world, envs.carla.routes, envs.carla.server\n"
            "from envs.carla.config import CarlaConfig\n"
            "from envs.factory import env_config_from_dict\n"
            "print(env_config_from_dict({'backend': 'carla', 'worlds_per_service': 1}).backend_config.town)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Town10HD_Opt"
