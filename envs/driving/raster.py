"""The bird's-eye raster observation every driving backend renders the same way, for CNN policies.

A raster is ``[N, 6, S, S]`` uint8, one image per world, centred on the ego: the ego sits at the image centre
facing up (row 0 is ahead, column 0 is to the ego's left) and the image covers ``metres`` x ``metres``.
Channels (:data:`CHANNELS`), 0 or 255 unless said otherwise:

0. ``drivable``: lanes and junction surfaces;
1. ``markings``: lane boundary lines (none inside junctions);
2. ``route``: the ego's route from where it is to its goal, a :data:`ROUTE_WIDTH_M` band;
3. ``vehicles``: the other vehicles' boxes (not the ego: it is always the same box at the centre);
4. ``pedestrians``: pedestrians' discs (at least one cell);
5. ``lights``: each traffic light's stop line across its approach lanes, 255 red, 170 yellow, 85 green.

A policy trained on one backend's rasters reads another's because both draw through :class:`EgoFrame`: the
same grid of cell centres (the town channels sample a world-frame map raster there), the same point-to-cell
rule and the same sampled shapes for the route band, boxes and discs. Frames are right-handed: world x, y,
yaw counter-clockwise from +x, metres and radians (CARLA's left-handed frame is converted before drawing).

:func:`disc_cells` is how both backends draw their world-frame map rasters: the cells whose centres lie
within a radius of sample points (lane centres with half a lane width make the drivable area, points on the
lane edges the markings, points across a lane its stop line).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from envs.driving.lights import GREEN, RED, YELLOW

CHANNELS = ("drivable", "markings", "route", "vehicles", "pedestrians", "lights")
LIGHT_VALUES = {RED: 255, YELLOW: 170, GREEN: 85}
ROUTE_WIDTH_M = 3.0  # width of the route band
ROUTE_BACK_M = 0.0  # the band starts this far behind the ego's route position


class EgoFrame:
    """The ego-centred image grid of ``size`` x ``size`` cells covering ``metres`` x ``metres`` (see the module
    docstring), and the drawing steps every backend shares. ``dtype`` is that of the grid (float64 for maps
    whose coordinates reach kilometres)."""

    def __init__(self, size: int, metres: float, device: torch.device, dtype: torch.dtype = torch.float32):
        self.size, self.metres, self.dtype = size, metres, dtype
        self.cell = metres / size
        centres = (torch.arange(size, device=device, dtype=dtype) + 0.5 - size / 2) * self.cell
        forward = -centres[:, None].expand(size, size)  # row 0 is ahead
        left = -centres[None, :].expand(size, size)  # column 0 is on the left
        self._grid = torch.stack([forward.reshape(-1), left.reshape(-1)], -1)  # [S*S, 2] in the ego frame
        step = self.cell / 2
        self._route_across = torch.arange(-ROUTE_WIDTH_M / 2, ROUTE_WIDTH_M / 2 + 1e-6, step, device=device,
                                          dtype=dtype)
        half_diagonal = metres / math.sqrt(2)
        self._route_along = torch.arange(-ROUTE_BACK_M, half_diagonal + step, step, device=device, dtype=dtype)

    def cell_centres(self, ego_x: torch.Tensor, ego_y: torch.Tensor, ego_yaw: torch.Tensor) -> torch.Tensor:
        """World points [N, S*S, 2] of every cell centre of the images of egos at (x, y, yaw) [N]."""
        cos, sin = torch.cos(ego_yaw)[:, None], torch.sin(ego_yaw)[:, None]
        forward, left = self._grid[None, :, 0], self._grid[None, :, 1]
        return torch.stack([ego_x[:, None] + forward * cos - left * sin, ego_y[:, None] + forward * sin + left * cos],
                           -1)

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

    def blank(self, num_worlds: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty images: (``flat`` buffer, ``out`` [N, C, S*S] view of it, ``base`` [N, 1] offset of each world's
        image in ``flat``). ``flat`` holds one spare element at its end that takes every sample point falling
        outside its image (:meth:`splat`)."""
        cells = self.size * self.size
        flat = torch.zeros(num_worlds * len(CHANNELS) * cells + 1, dtype=torch.uint8, device=device)
        out = flat[:-1].view(num_worlds, len(CHANNELS), cells)
        base = torch.arange(num_worlds, device=device)[:, None] * (len(CHANNELS) * cells)
        return flat, out, base

    def splat(self, flat, base, channel: int, points: torch.Tensor, ego_x, ego_y, ego_yaw, valid=None) -> None:
        """Set channel ``channel`` to 255 in the cells of ``points`` [N, P, 2] (where ``valid`` [N, P])."""
        cell = self.to_cells(points, ego_x, ego_y, ego_yaw)
        keep = cell >= 0 if valid is None else (cell >= 0) & valid
        index = torch.where(keep, base + channel * self.size * self.size + cell, flat.numel() - 1)
        flat.index_fill_(0, index.reshape(-1), 255)

    def route_arc_lengths(self, route_s: torch.Tensor, route_end_s: torch.Tensor) -> torch.Tensor:
        """Arc lengths [N, P] along each route to sample for the route band (past the goal: the goal)."""
        return (route_s[:, None] + self._route_along[None, :]).clamp(min=0).minimum(route_end_s[:, None])

    def widen(self, points: torch.Tensor, headings: torch.Tensor) -> torch.Tensor:
        """Route centre points [N, P, 2] and headings [N, P] -> band points [N, P * W, 2]."""
        normal = torch.stack([-torch.sin(headings), torch.cos(headings)], -1)
        band = points[:, :, None, :] + normal[:, :, None, :] * self._route_across[None, None, :, None]
        return band.flatten(1, 2)


def box_samples(x: torch.Tensor, y: torch.Tensor, yaw: torch.Tensor, length, width, spacing: float) -> torch.Tensor:
    """Points [N, K, P, 2] covering boxes [N, K] at about ``spacing``. ``length`` and ``width`` are one size for
    every box (floats) or each box's own ([N, K] tensors: the sample grid of the largest box, scaled)."""
    longest, widest = (float(v.max()) if isinstance(v, torch.Tensor) else v for v in (length, width))
    longest, widest = max(longest, 1e-6), max(widest, 1e-6)
    along = torch.linspace(-longest / 2, longest / 2, max(2, math.ceil(longest / spacing) + 1), device=x.device,
                           dtype=x.dtype)
    across = torch.linspace(-widest / 2, widest / 2, max(2, math.ceil(widest / spacing) + 1), device=x.device,
                            dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(along, across, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
    ahead, aside = grid[:, 0], grid[:, 1]
    if isinstance(length, torch.Tensor):
        ahead = ahead * (length / longest)[..., None]
    if isinstance(width, torch.Tensor):
        aside = aside * (width / widest)[..., None]
    cos, sin = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    px = x[..., None] + ahead * cos - aside * sin
    py = y[..., None] + ahead * sin + aside * cos
    return torch.stack([px, py], -1)


def disc_samples(x: torch.Tensor, y: torch.Tensor, radius: float) -> torch.Tensor:
    """Points [N, M, 9, 2]: a 3 x 3 grid spanning +-``radius`` around each of the discs at (x, y) [N, M]."""
    offsets = torch.linspace(-radius, radius, 3, device=x.device, dtype=x.dtype)
    px = (x[..., None, None] + offsets[:, None]).expand(-1, -1, 3, 3)
    py = (y[..., None, None] + offsets[None, :]).expand(-1, -1, 3, 3)
    return torch.stack([px, py], -1).flatten(2, 3)


def light_shades(states: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values of light states (envs.driving.lights codes; anything else, such as -1, is 0)."""
    return sum((states == value).to(torch.uint8) * shade for value, shade in LIGHT_VALUES.items())


def disc_cells(centres: np.ndarray, radius, origin, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every cell of a world grid (cell (i, j) covers x from ``origin[0] + j * resolution`` and
    y from ``origin[1] + i * resolution``) whose centre lies within ``radius`` (one float, or one per centre
    [n]) of any of ``centres`` [n, 2]; a cell near several centres appears once per centre. Unbounded: rows
    and cols may fall outside a grid."""
    reach = int(np.ceil(np.max(radius) / resolution)) + 1
    offsets = np.arange(-reach, reach + 1)
    col0 = np.floor((centres[:, 0] - origin[0]) / resolution).astype(np.int64)
    row0 = np.floor((centres[:, 1] - origin[1]) / resolution).astype(np.int64)
    shape = (len(centres), len(offsets), len(offsets))
    rows = np.broadcast_to(row0[:, None, None] + offsets[None, :, None], shape)
    cols = np.broadcast_to(col0[:, None, None] + offsets[None, None, :], shape)
    cell_x = origin[0] + (cols + 0.5) * resolution
    cell_y = origin[1] + (rows + 0.5) * resolution
    squared = radius**2 if np.ndim(radius) == 0 else np.asarray(radius)[:, None, None] ** 2
    inside = (cell_x - centres[:, 0, None, None]) ** 2 + (cell_y - centres[:, 1, None, None]) ** 2 <= squared
    return rows[inside], cols[inside]


__all__ = ["CHANNELS", "LIGHT_VALUES", "ROUTE_BACK_M", "ROUTE_WIDTH_M", "EgoFrame", "box_samples", "disc_cells",
           "disc_samples", "light_shades"]
