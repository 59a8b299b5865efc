"""Rule-based drivers over the privileged observation vector, batched.

``route_follower`` is the minimal one: pure pursuit on the route points with a proportional speed
controller. It ignores other road users; the living-world issue grows it into the full expert (gap
keeping, lights, pedestrians).
"""

from __future__ import annotations

import torch

from envs.api import OBSERVATION_LAYOUT, ObservationLayout


def route_follower(obs: torch.Tensor, target_speed: float = 8.0, layout: ObservationLayout = OBSERVATION_LAYOUT
                   ) -> torch.Tensor:
    """Controls [B, 3] that steer at the second route point (5-10 m ahead) and hold ``target_speed`` m/s."""
    route = obs[:, layout.slices["route"]].view(len(obs), -1, 2)
    aim = route[:, 1]
    steer = (-2.0 * torch.atan2(aim[:, 1], aim[:, 0])).clamp(-1, 1)  # target to the left -> negative steer
    speed = obs[:, layout.slices["ego"].start] * layout.speed_scale
    throttle = ((target_speed - speed) * 0.5).clamp(0, 1)
    brake = ((speed - target_speed) * 0.5).clamp(0, 1)
    return torch.stack([throttle, brake, steer], dim=1)
