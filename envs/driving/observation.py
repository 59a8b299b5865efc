"""The privileged observation vector, built batched from world quantities (layout: envs.api).

Positions are expressed in the ego frame (x forward, y left) so a policy sees the same numbers whatever the
ego's world position; the slots for other vehicles, pedestrians and the traffic light are zero with their
valid flag 0 when a world holds none.

Normalisation (see also envs.api.ObservationLayout): positions and distances in metres / ``distance_scale``
(50), speeds and velocities in m/s / ``speed_scale`` (10), vehicle length and width in metres /
:data:`SIZE_SCALE_M`, the lateral offset in metres / :data:`LATERAL_SCALE_M`. Other vehicles and
pedestrians are listed nearest first; their velocities are their own (not relative to the ego), expressed
in the ego frame; ``cos_yaw``/``sin_yaw`` are of their heading relative to the ego's.
"""

from __future__ import annotations

import torch

from envs.api import ObservationLayout

LATERAL_SCALE_M = 5.0  # lateral offset is divided by this: +-1 is well outside a lane
SIZE_SCALE_M = 5.0  # vehicle length and width are divided by this (a car: about 1.0 and 0.4)
ACTOR_RANGE_SCALES = 2.0  # actors farther than this many distance_scales (100 m) are not observed


def to_ego_frame(points: torch.Tensor, x: torch.Tensor, y: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """World points [B, N, 2] -> ego frame (x forward, y left) of egos at (x, y, yaw) [B]."""
    dx, dy = points[..., 0] - x[:, None], points[..., 1] - y[:, None]
    cos, sin = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([cos * dx + sin * dy, -sin * dx + cos * dy], dim=-1)


def build_observation(layout: ObservationLayout, *, x, y, yaw, speed, last_control, lateral_offset,
                      heading_error, route_remaining, route_points, vehicles=None, pedestrians=None,
                      light=None) -> torch.Tensor:
    """Flat observations [B, layout.size]. ``route_points`` [B, N, 2] in world coordinates; ``vehicles``
    [B, K, 9], ``pedestrians`` [B, Kp, 5] and ``light`` [B, 5] already in layout order (or None: zeros,
    for the caller to fill in place, e.g. with :func:`actor_features`)."""
    num_worlds = x.shape[0]
    slices = layout.slices
    obs = torch.zeros(num_worlds, layout.size, device=x.device)
    ego = obs[:, slices["ego"]]
    ego[:, 0] = speed / layout.speed_scale
    ego[:, 1:4] = last_control
    ego[:, 4] = lateral_offset / LATERAL_SCALE_M
    ego[:, 5] = torch.sin(heading_error)
    ego[:, 6] = torch.cos(heading_error)
    ego[:, 7] = route_remaining
    route = to_ego_frame(route_points, x, y, yaw) / layout.distance_scale
    obs[:, slices["route"]] = route.reshape(num_worlds, -1)
    for name, value in (("vehicles", vehicles), ("pedestrians", pedestrians), ("light", light)):
        if value is not None:
            obs[:, slices[name]] = value.reshape(num_worlds, -1)
    return obs


def actor_features(layout: ObservationLayout, ego_x, ego_y, ego_yaw, actor_x, actor_y, actor_vx, actor_vy, valid,
                   out: torch.Tensor, *, actor_yaw=None, length: float = 0.0, width: float = 0.0) -> torch.Tensor:
    """Write the ``out.shape[1]`` nearest valid actors (world poses [B, N], ``valid`` [B, N] bool) of egos at
    (ego_x, ego_y, ego_yaw) [B] into ``out`` [B, K, F] (zeroed), nearest first, in layout order: vehicles
    (when ``actor_yaw`` is given) ``x, y, cos_yaw, sin_yaw, vx, vy, length, width, valid``, pedestrians
    ``x, y, vx, vy, valid``. Slots without an actor (or beyond ACTOR_RANGE_SCALES) stay zero."""
    num_worlds, num_actors = actor_x.shape
    slots = out.shape[1]
    dx, dy = actor_x - ego_x[:, None], actor_y - ego_y[:, None]
    distance = dx * dx + dy * dy
    seen = valid & (distance <= (ACTOR_RANGE_SCALES * layout.distance_scale) ** 2)
    count = min(slots, num_actors)
    order = (distance + 1e9 * ~seen).topk(count, dim=1, largest=False, sorted=True).indices
    shown = seen.gather(1, order).float()  # [B, K]

    def pick(values):
        return values.gather(1, order)

    dx, dy, vx, vy = pick(dx), pick(dy), pick(actor_vx), pick(actor_vy)
    cos, sin = torch.cos(ego_yaw)[:, None], torch.sin(ego_yaw)[:, None]
    scale, speed_scale = shown / layout.distance_scale, shown / layout.speed_scale
    columns = [(cos * dx + sin * dy) * scale, (-sin * dx + cos * dy) * scale]
    if actor_yaw is not None:
        relative = pick(actor_yaw) - ego_yaw[:, None]
        columns += [torch.cos(relative) * shown, torch.sin(relative) * shown]
    columns += [(cos * vx + sin * vy) * speed_scale, (-sin * vx + cos * vy) * speed_scale]
    if actor_yaw is not None:
        columns += [shown * (length / SIZE_SCALE_M), shown * (width / SIZE_SCALE_M)]
    columns.append(shown)
    for index, column in enumerate(columns):
        out[:, :count, index] = column
    return out


def light_features(layout: ObservationLayout, state: torch.Tensor, distance: torch.Tensor, valid: torch.Tensor,
                   out: torch.Tensor) -> torch.Tensor:
    """Write the light slot into ``out`` [B, 5]: one-hot (red, yellow, green) of ``state`` (envs.driving.lights
    constants), the distance (m) from the ego's front bumper along the route to the stop line /
    distance_scale, and valid; all zero where not ``valid``."""
    from envs.driving.lights import GREEN, RED, YELLOW

    shown = valid.float()
    out[:, 0] = (state == RED) * shown
    out[:, 1] = (state == YELLOW) * shown
    out[:, 2] = (state == GREEN) * shown
    out[:, 3] = distance / layout.distance_scale * shown
    out[:, 4] = shown
    return out


def red_stop_distance(obs: torch.Tensor, layout: ObservationLayout) -> torch.Tensor:
    """[B] metres from the ego's front bumper to the stop line of the red light its observation shows
    ahead; inf where none is shown."""
    light = obs[:, layout.slices["light"]]
    red = (light[:, 0] > 0.5) & (light[:, 4] > 0.5)
    return torch.where(red, light[:, 3] * layout.distance_scale, torch.full_like(light[:, 3], float("inf")))
