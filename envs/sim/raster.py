"""The bird's-eye-view raster observation of the simulator, batched: ``[N, 6, S, S]`` uint8 images centred on
each ego. Channels, values and the ego-centred frame are those every driving backend shares
(:mod:`envs.driving.raster`, which draws through the same :class:`~envs.driving.raster.EgoFrame`).

How: the town channels (0, 1, 5) sample the town's rasters with one gather per cell, at the cell centres
(a fixed grid of ego-frame offsets rotated by the ego's yaw); the route and actors are drawn by
scattering sample points (spaced at half a cell) into the image. No Python loop over worlds or actors.
"""

from __future__ import annotations

import torch

from envs.driving.raster import CHANNELS, LIGHT_VALUES, EgoFrame, box_samples, disc_samples, light_shades
from envs.sim.bank import TownBank
from envs.sim.lights import light_states
from envs.sim.town import RASTER_DRIVABLE, RASTER_MARKING

__all__ = ["CHANNELS", "LIGHT_VALUES", "RasterObserver"]  # the channels are re-exported for callers of this module


class RasterObserver(EgoFrame):
    """Draws the raster observation of any subset of a simulator's worlds (see the module docstring)."""

    def __init__(self, size: int, metres: float, device: torch.device, *, dt: float, vehicle_length: float,
                 vehicle_width: float, pedestrian_radius: float):
        super().__init__(size, metres, device)
        self._dt = dt
        self._vehicle_length, self._vehicle_width = vehicle_length, vehicle_width
        self._pedestrian_radius = pedestrian_radius

    def draw(self, bank: TownBank, lights_config, state, route_points: torch.Tensor) -> torch.Tensor:
        """The raster [N, 6, S, S] uint8 of the worlds in ``state`` (a PackedState, or a subset of one),
        with ``route_points`` [N, P, 2] world points along each route (from :meth:`route_samples`)."""
        s = state
        num_worlds, size = s.x.shape[0], self.size
        world = self.cell_centres(s.x, s.y, s.yaw)
        flat, out, base = self.blank(num_worlds, s.x.device)
        bits = bank.raster_bits(s.town_slot, world)
        out[:, 0] = ((bits & RASTER_DRIVABLE) > 0).to(torch.uint8) * 255
        out[:, 1] = ((bits & RASTER_MARKING) > 0).to(torch.uint8) * 255
        if lights_config.enabled:
            light = bank.light_ids_under(s.town_slot, world).long() - 1  # -1: no stop line
            lights = torch.arange(bank.num_lights_max, device=s.x.device).expand(num_worlds, -1)
            states = light_states(bank, lights_config, s.town_slot, lights, s.step * self._dt, s.light_offset)
            out[:, 5] = light_shades(states.gather(1, light.clamp(min=0))) * (light >= 0)
        self.splat(flat, base, 2, route_points, s.x, s.y, s.yaw)
        if hasattr(s, "traffic_x") and s.traffic_x.shape[1]:
            points = box_samples(s.traffic_x, s.traffic_y, s.traffic_yaw, self._vehicle_length,
                                 self._vehicle_width, self.cell / 2)
            valid = (s.traffic_lane >= 0)[..., None].expand(-1, -1, points.shape[2])
            self.splat(flat, base, 3, points.flatten(1, 2), s.x, s.y, s.yaw, valid.flatten(1))
        if hasattr(s, "ped_x") and s.ped_x.shape[1]:
            points = disc_samples(s.ped_x, s.ped_y, max(self._pedestrian_radius, self.cell / 2))  # [N, M, 9, 2]
            valid = (s.ped_time_left > 0)[..., None].expand(-1, -1, 9)
            self.splat(flat, base, 4, points.flatten(1, 2), s.x, s.y, s.yaw, valid.flatten(1))
        return out.view(num_worlds, len(CHANNELS), size, size)
