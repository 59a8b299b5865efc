"""The privileged observation vector, built batched from world quantities (layout: envs.api).

Positions are expressed in the ego frame (x forward, y left) so a policy sees the same numbers whatever the
ego's world position; the slots for other vehicles, pedestrians and the traffic light are zero with their
valid flag 0 when a world holds none.
"""

from __future__ import annotations

import torch

from envs.api import ObservationLayout

LATERAL_SCALE_M = 5.0  # lateral offset is divided by this: +-1 is well outside a lane


def to_ego_frame(points: torch.Tensor, x: torch.Tensor, y: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """World points [B, N, 2] -> ego frame (x forward, y left) of egos at (x, y, yaw) [B]."""
    dx, dy = points[..., 0] - x[:, None], points[..., 1] - y[:, None]
    cos, sin = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([cos * dx + sin * dy, -sin * dx + cos * dy], dim=-1)


def build_observation(layout: ObservationLayout, *, x, y, yaw, speed, last_control, lateral_offset,
                      heading_error, route_remaining, route_points, vehicles=None, pedestrians=None,
                      light=None) -> torch.Tensor:
    """Flat observations [B, layout.size]. ``route_points`` [B, N, 2] in world coordinates; ``vehicles``
    [B, K, 9], ``pedestrians`` [B, Kp, 5] and ``light`` [B, 5] already in layout order (or None)."""
    num_worlds = x.shape[0]
    ego = torch.stack([
        speed / layout.speed_scale,
        last_control[:, 0], last_control[:, 1], last_control[:, 2],
        lateral_offset / LATERAL_SCALE_M,
        torch.sin(heading_error), torch.cos(heading_error),
        route_remaining,
    ], dim=-1)
    route = to_ego_frame(route_points, x, y, yaw) / layout.distance_scale
    obs = torch.zeros(num_worlds, layout.size, device=x.device)
    slices = layout.slices
    obs[:, slices["ego"]] = ego
    obs[:, slices["route"]] = route.reshape(num_worlds, -1)
    for name, value in (("vehicles", vehicles), ("pedestrians", pedestrians), ("light", light)):
        if value is not None:
            obs[:, slices[name]] = value.reshape(num_worlds, -1)
    return obs
