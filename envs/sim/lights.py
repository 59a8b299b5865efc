"""Traffic-light states, batched: a pure function of the world's time and its phase offset.

Each junction cycles through its phases (one per approach, see envs.sim.towngen): the phase in turn is
green for ``green_s``, yellow for ``yellow_s``, then every light of the junction is red for ``all_red_s``
before the next phase turns green. A light not in its junction's current phase is red. So one junction's
cycle lasts ``num_phases * (green_s + yellow_s + all_red_s)`` seconds.

Where a world's junctions are in their cycles comes from one number per world, ``offset`` in [0, 1),
drawn from the world's key at reset (stream ``rng.STREAM_LIGHTS``) and kept in the world state; junction
``j`` starts at the fraction ``frac(offset + frac(j * golden ratio))`` of its cycle, so neighbouring junctions
are not in step. The state of every light is therefore a pure function of (offset, step counter): a
cloned world sees the same lights.
"""

from __future__ import annotations

import torch

from envs.driving.lights import GREEN, RED, YELLOW  # noqa: F401  (the states light_states returns)
from envs.sim import ops
from envs.sim.bank import TownBank
from envs.sim.config import LightConfig


def light_states(bank: TownBank, config: LightConfig, slot: torch.Tensor, light: torch.Tensor,
                 time_s: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """States (GREEN / YELLOW / RED, long) of lights ``light`` [B, ...] (ids in each world's town; -1 is an
    uncontrolled lane and reads GREEN) at time ``time_s`` [B] for worlds in towns ``slot`` [B] with light
    offsets ``offset`` [B]. Disabled lights are all GREEN."""
    if not config.enabled:
        return torch.zeros_like(light, dtype=torch.long)
    extra = (1,) * (light.dim() - 1)
    rows = slot.view(-1, *extra) * bank.num_lights_max + light.clamp(min=0)
    start, phase, num_phases = bank.light_float_table.index_select(0, rows.reshape(-1)).view(*light.shape, 3).unbind(-1)
    phase_s = config.phase_s
    cycle = num_phases * phase_s
    now = time_s.view(-1, *extra) + torch.frac(offset.view(-1, *extra) + start) * cycle
    within_cycle = now - torch.floor(now / cycle) * cycle  # torch.remainder's formula, without its slow kernel
    active = torch.floor(within_cycle / phase_s)
    within_phase = within_cycle - active * phase_s
    # GREEN = 0, YELLOW = 1, RED = 2: count the thresholds passed; lights of other phases are RED.
    own = ops.ge(within_phase, config.green_s) + ops.ge(within_phase, config.green_s + config.yellow_s)
    state = own.maximum((1.0 - ops.eq(active, phase)) * RED)
    return (state * ops.as_float(ops.ge(light, 0))).long()
