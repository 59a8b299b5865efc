"""The bird's-eye-view raster observation, batched: ``[N, 6, S, S]`` uint8 images centred on each ego.

The ego sits at the image centre facing up (row 0 is ahead, column 0 is to the ego's left); the image
covers ``raster_metres`` x ``raster_metres``. Channels (:data:`CHANNELS`), 0 or 255 unless said otherwise:

0. ``drivable``: lanes and junction surfaces;
1. ``markings``: lane boundary lines;
2. ``route``: the ego's route from where it is to its goal, a lane-wide band;
3. ``vehicles``: traffic vehicles' boxes (not the ego: it is always the same box at the centre);
4. ``pedestrians``: pedestrians' discs (at least one cell);
5. ``lights``: each traffic light's stop line across its approach lanes, 255 red, 170 yellow, 85 green.

How: the town channels (0, 1, 5) sample the town's rasters with one gather per cell, at the cell centres
(a fixed grid of ego-frame offsets rotated by the ego's yaw); the route and actors are drawn by
scattering sample points (spaced at half a cell) into the image. No Python loop over worlds or actors.
"""

from __future__ import annotations

import math

import torch

from envs.driving.lights import GREEN, RED, YELLOW
from envs.sim.bank import TownBank
from envs.sim.lights import light_states
from envs.sim.town import RASTER_DRIVABLE, RASTER_MARKING

CHANNELS = ("drivable", "markings", "route", "vehicles", "pedestrians", "lights")
LIGHT_VALUES = {RED: 255, YELLOW: 170, GREEN: 85}
ROUTE_WIDTH_M = 3.0  # width of the route band
ROUTE_BACK_M = 0.0  # the band starts this far behind the ego's route position


class RasterObserver:
    """Draws the raster observation of any subset of a simulator's worlds (see the module docstring)."""

    def __init__(self, size: int, metres: float, device: torch.device, *, dt: float, vehicle_length: float,
                 vehicle_width: float, pedestrian_radius: float):
        self.size, self.metres = size, metres
        self._dt = dt
        self._vehicle_length, self._vehicle_width = vehicle_length, vehicle_width
        self._pedestrian_radius = pedestrian_radius
        self.cell = metres / size
        centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5 - size / 2) * self.cell
        forward = -centres[:, None].expand(size, size)  # row 0 is ahead
        left = -centres[None, :].expand(size, size)  # column 0 is on the left
        self._grid = torch.stack([forward.reshape(-1), left.reshape(-1)], -1)  # [S*S, 2] in the ego frame
        step = self.cell / 2
        across = torch.arange(-ROUTE_WIDTH_M / 2, ROUTE_WIDTH_M / 2 + 1e-6, step, device=device)
        self._route_across = across
        half_diagonal = metres / math.sqrt(2)
        self._route_along = torch.arange(-ROUTE_BACK_M, half_diagonal + step, step, device=device)

    def to_cells(self, xy: torch.Tensor, ego_x, ego_y, ego_yaw) -> torch.Tensor:
        """Flat cell index [N, ...] of world points ``xy`` [N, ..., 2]; -1 outside the image."""
        extra = (1,) * (xy.dim() - 2)
        dx = xy[..., 0] - ego_x.view(-1, *extra)
        dy = xy[..., 1] - ego_y.view(-1, *extra)
        cos, sin = torch.cos(ego_yaw).view(-1, *extra), torch.sin(ego_yaw).view(-1, *extra)
        forward = cos * dx + sin * dy
        left = -sin * dx + cos * dy
        row = torch.floor(self.size / 2 - forward / self.cell)
        col = torch.floor(self.size / 2 - left / self.cell)
        inside = (row >= 0) & (row < self.size) & (col >= 0) & (col < self.size)
        return torch.where(inside, (row * self.size + col).long(), -1)

    def draw(self, bank: TownBank, lights_config, state, route_points: torch.Tensor) -> torch.Tensor:
        """The raster [N, 6, S, S] uint8 of the worlds in ``state`` (a PackedState, or a subset of one),
        with ``route_points`` [N, P, 2] world points along each route (from :meth:`route_samples`)."""
        s = state
        num_worlds, size = s.x.shape[0], self.size
        cells = size * size
        cos, sin = torch.cos(s.yaw)[:, None], torch.sin(s.yaw)[:, None]
        forward, left = self._grid[None, :, 0], self._grid[None, :, 1]
        world = torch.stack([s.x[:, None] + forward * cos - left * sin, s.y[:, None] + forward * sin + left * cos], -1)
        # One spare element at the end takes every sample point that falls outside its image.
        flat = torch.zeros(num_worlds * len(CHANNELS) * cells + 1, dtype=torch.uint8, device=s.x.device)
        out = flat[:-1].view(num_worlds, len(CHANNELS), cells)
        bits = bank.raster_bits(s.town_slot, world)
        out[:, 0] = ((bits & RASTER_DRIVABLE) > 0).to(torch.uint8) * 255
        out[:, 1] = ((bits & RASTER_MARKING) > 0).to(torch.uint8) * 255
        if lights_config.enabled:
            light = bank.light_ids_under(s.town_slot, world).long() - 1  # -1: no stop line
            lights = torch.arange(bank.num_lights_max, device=s.x.device).expand(num_worlds, -1)
            states = light_states(bank, lights_config, s.town_slot, lights, s.step * self._dt, s.light_offset)
            state = states.gather(1, light.clamp(min=0))
            pixel = sum((state == value).to(torch.uint8) * shade for value, shade in LIGHT_VALUES.items())
            out[:, 5] = pixel * (light >= 0)
        base = torch.arange(num_worlds, device=s.x.device)[:, None] * (len(CHANNELS) * cells)
        self._splat(flat, base, 2, route_points, s)
        if hasattr(s, "traffic_x") and s.traffic_x.shape[1]:
            points = _box_samples(s.traffic_x, s.traffic_y, s.traffic_yaw, self._vehicle_length,
                                  self._vehicle_width, self.cell / 2)
            valid = (s.traffic_lane >= 0)[..., None].expand(-1, -1, points.shape[2])
            self._splat(flat, base, 3, points.flatten(1, 2), s, valid.flatten(1))
        if hasattr(s, "ped_x") and s.ped_x.shape[1]:
            radius = max(self._pedestrian_radius, self.cell / 2)
            offsets = torch.linspace(-radius, radius, 3, device=s.x.device)
            px = (s.ped_x[..., None, None] + offsets[:, None]).expand(-1, -1, 3, 3)
            py = (s.ped_y[..., None, None] + offsets[None, :]).expand(-1, -1, 3, 3)
            points = torch.stack([px, py], -1).flatten(2, 3)  # [N, M, 9, 2]
            valid = (s.ped_time_left > 0)[..., None].expand(-1, -1, 9)
            self._splat(flat, base, 4, points.flatten(1, 2), s, valid.flatten(1))
        return out.view(num_worlds, len(CHANNELS), size, size)

    def route_arc_lengths(self, route_s: torch.Tensor, route_end_s: torch.Tensor) -> torch.Tensor:
        """Arc lengths [N, P] along each route to sample for the route band (past the goal: the goal)."""
        return (route_s[:, None] + self._route_along[None, :]).clamp(min=0).minimum(route_end_s[:, None])

    def widen(self, points: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
        """Route centre points [N, P, 2] and headings [N, P] -> band points [N, P * W, 2]."""
        normal = torch.stack([-torch.sin(headings), torch.cos(headings)], -1)
        band = points[:, :, None, :] + normal[:, :, None, :] * self._route_across[None, None, :, None]
        return band.flatten(1, 2)

    def _splat(self, flat, base, channel, points, s, valid=None):
        """Set channel ``channel`` to 255 in the cells of ``points`` [N, P, 2] (where ``valid`` [N, P])."""
        cell = self.to_cells(points, s.x, s.y, s.yaw)
        keep = cell >= 0 if valid is None else (cell >= 0) & valid
        index = torch.where(keep, base + channel * self.size * self.size + cell, flat.numel() - 1)
        flat.index_fill_(0, index.reshape(-1), 255)


def _box_samples(x, y, yaw, length, width, spacing):
    """Points [N, K, P, 2] covering boxes [N, K] at about ``spacing``."""
    along = torch.linspace(-length / 2, length / 2, max(2, math.ceil(length / spacing) + 1), device=x.device)
    across = torch.linspace(-width / 2, width / 2, max(2, math.ceil(width / spacing) + 1), device=x.device)
    grid = torch.stack(torch.meshgrid(along, across, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
    cos, sin = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    px = x[..., None] + grid[:, 0] * cos - grid[:, 1] * sin
    py = y[..., None] + grid[:, 0] * sin + grid[:, 1] * cos
    return torch.stack([px, py], -1)
