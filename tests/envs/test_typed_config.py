"""Strict dict -> dataclass conversion used by the entry points."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from envs.typed_config import ConfigError, from_dict, to_dict


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"


@dataclass(frozen=True)
class Outer:
    count: int = 1
    name: str | None = None
    sizes: tuple[int, ...] = (2, 3)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


def test_round_trip_and_defaults():
    config = from_dict(Outer, {"count": 3, "sizes": [4], "inner": {"mode": "slow", "rate": 1}})
    assert config == Outer(count=3, sizes=(4,), inner=Inner(rate=1.0, mode="slow"))
    assert from_dict(Outer, to_dict(config)) == config
    assert from_dict(Outer, {}) == Outer()


@pytest.mark.parametrize("data,message", [
    ({"cout": 2}, "unknown config key cout; did you mean count"),
    ({"inner": {"mod": "fast"}}, "unknown config key inner.mod; did you mean inner.mode"),
    ({"inner": {"mode": "medium"}}, r"inner.mode must be one of \['fast', 'slow'\], got 'medium'"),
    ({"count": "3"}, "count must be an integer"),
    ({"count": True}, "count must be an integer"),
    ({"inner": {"rate": "high"}}, "inner.rate must be a number"),
    ({"sizes": 3}, "sizes must be a list"),
    ({"sizes": [1, "x"]}, r"sizes\[1\] must be an integer"),
    ({"count": 0}, "count must be >= 1"),
    ({"count": "???"}, "count must be set"),
])
def test_errors_name_the_key_and_the_fix(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "")


def test_non_finite_numbers_are_refused():
    import math

    from grpo.config import train_config_from_dict

    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match="grpo.learning_rate must be a finite number"):
            train_config_from_dict({"grpo": {"learning_rate": value}})
    with pytest.raises(ConfigError, match="branches per iteration; at most 1,048,576"):
        train_config_from_dict({"grpo": {"num_trunks": 100_000_000}})
