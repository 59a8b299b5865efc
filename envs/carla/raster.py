"""The bird's-eye raster observation on CARLA, drawn from the map and the world state (no camera).

The raster is the built-in simulator's, channel for channel, cell for cell (:mod:`envs.driving.raster`: six
channels, ``raster_size`` cells over ``raster_metres``, the ego at the centre facing up), so a CNN policy
trained on one backend reads the other's. It is drawn the way Roach (Zhang et al., 2021) draws its
bird's-eye view, from privileged state rather than a camera sensor: it is deterministic (a function of the
state a snapshot holds, so a restored world shows the same raster), it costs no rendering on the server
(which runs in no-rendering mode), and it is cheap (a gather per cell and a few thousand scattered points).

**Per map, once** (:class:`MapRaster`, built on first use and kept by the town data): the lane centre lines
of the planner's lane graph (every driving lane, junction connectors included, sampled by the carla client
from the ``carla.Map``; no server call) are densified to 0.25 m and stamped as discs of half the lane width
into a world-frame grid of 0.5 m cells (drivable area); points on both edges of every lane outside junctions
make the markings (not drawn inside junctions), as the simulator's town raster does; each traffic light's
stop lines (:mod:`envs.carla.lights`) are stamped as 1 m bands just before the line, holding the light's
index. The grid is stored as 128 m tiles, only where there is road: a 10 km map (Town12, Town13) would
take 400 MB as one array.

**Per step** (:func:`draw_rasters`): the map layers are sampled at the image's cell centres, the route is
a 3 m band from the ego's route position to the goal, other vehicles are their bounding boxes at their
poses, walkers are discs, and each stop line takes its light's current state. Everything is converted to the
right-handed frame first (CARLA's y and yaw change sign, as in the vector observation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from envs.carla.lights import StopLines, to_sim_state
from envs.carla.routes import densify
from envs.carla.state import ActorStates, RouteData
from envs.driving.raster import CHANNELS, EgoFrame, box_samples, disc_cells, disc_samples, light_shades

RESOLUTION_M = 0.5  # side of a map raster cell (the simulator's town raster uses the same)
TILE_CELLS = 256  # a tile is TILE_CELLS x TILE_CELLS cells (128 m at 0.5 m)
MARGIN_M = 20.0  # the grid's origin lies this far beyond the map's lanes (as the simulator's town raster)
DENSE_SPACING_M = 0.25  # lane centre lines are densified to this spacing before stamping
MARKING_RADIUS_M = 0.6 * RESOLUTION_M  # a marking is this thick on each side of the lane edge
STOP_BAND_RADIUS_M = 0.5  # stop lines are bands this wide on each side ...
STOP_BAND_BACK_M = 0.5  # ... centred this far before the line (the simulator's: the last metre of the lane)
PEDESTRIAN_RADIUS_M = 0.35  # a walker's disc (the simulator's pedestrian radius; a snapshot keeps no walker size)

DRIVABLE, MARKING, JUNCTION = 1, 2, 4  # bits of the map raster


class TiledGrid:
    """A world-frame grid (right-handed; cell (row i, col j) covers x from ``origin[0] + j * resolution`` and y
    from ``origin[1] + i * resolution``), stored as square tiles of ``tile`` cells that exist only where
    something was drawn. Draw with :meth:`stamp`, then read with :meth:`lookup` (cells never drawn read 0)."""

    def __init__(self, origin: tuple[float, float], resolution: float, dtype, tile: int = TILE_CELLS):
        self.origin, self.resolution, self.dtype, self.tile = origin, resolution, np.dtype(dtype), tile
        self.tiles: dict[tuple[int, int], np.ndarray] = {}
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    def stamp(self, centres: np.ndarray, radius, value: int, *, combine: str = "or", chunk: int = 20_000) -> None:
        """Every cell whose centre lies within ``radius`` (one float, or one per centre) of one of ``centres``
        [n, 2] gets ``value``: OR-ed into it (``combine="or"``, bit fields) or written over it (``"set"``)."""
        if combine not in ("or", "set"):
            raise ValueError(f"combine must be 'or' or 'set', got {combine!r}")
        centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), len(centres))
        for start in range(0, len(centres), chunk):
            rows, cols = disc_cells(centres[start:start + chunk], radii[start:start + chunk], self.origin,
                                    self.resolution)
            keep = (rows >= 0) & (cols >= 0)  # the origin lies beyond everything drawn; guard all the same
            self._write(rows[keep], cols[keep], value, combine)
        self._frozen = None

    def _write(self, rows: np.ndarray, cols: np.ndarray, value: int, combine: str) -> None:
        if not len(rows):
            return
        size = self.tile
        tile_rows, tile_cols = rows // size, cols // size
        first_row, first_col = tile_rows.min(), tile_cols.min()
        span = tile_cols.max() - first_col + 1
        group = (tile_rows - first_row) * span + (tile_cols - first_col)  # the cells' tiles, numbered from 0
        if group.max() < 1 << 16:  # small keys sort by radix, in linear time (a chunk touches a few tiles)
            group = group.astype(np.uint16)
        order = np.argsort(group, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(group))])
        for number in np.flatnonzero(np.diff(bounds)):
            members = order[bounds[number]:bounds[number + 1]]
            key = (int(first_row + number // span), int(first_col + number % span))
            tile = self.tiles.setdefault(key, np.zeros((size, size), dtype=self.dtype))
            r, c = rows[members] % size, cols[members] % size
            if combine == "or":
                tile[r, c] |= value
            else:
                tile[r, c] = value
        self._frozen = None

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tiles [K, T, T], index [tile rows, tile cols] of each tile's position in it, -1 where none)."""
        if self._frozen is None:
            keys = sorted(self.tiles)
            shape = (max((k[0] for k in keys), default=-1) + 1, max((k[1] for k in keys), default=-1) + 1)
            index = np.full(shape, -1, dtype=np.int64)
            for number, key in enumerate(keys):
                index[key] = number
            stack = np.stack([self.tiles[k] for k in keys]) if keys else np.zeros((0, self.tile, self.tile),
                                                                                  dtype=self.dtype)
            self._frozen = (torch.from_numpy(stack), torch.from_numpy(index))
        return self._frozen

    def lookup(self, xy: torch.Tensor) -> torch.Tensor:
        """The values [...] at world points ``xy`` [..., 2] (the cell each point falls in; 0 off the grid)."""
        stack, index = self._tables()
        cell = torch.floor((xy - torch.tensor(self.origin, dtype=xy.dtype)) / self.resolution).long()
        col, row = cell[..., 0], cell[..., 1]
        size = self.tile
        tile_row, tile_col = torch.div(row, size, rounding_mode="floor"), torch.div(col, size, rounding_mode="floor")
        inside = (row >= 0) & (col >= 0) & (tile_row < index.shape[0]) & (tile_col < index.shape[1])
        if not len(stack) or not inside.any():
            return torch.zeros(xy.shape[:-1], dtype=stack.dtype)
        number = index[tile_row.clamp(0, index.shape[0] - 1), tile_col.clamp(0, index.shape[1] - 1)]
        number = torch.where(inside, number, -1)
        flat = number.clamp(min=0) * size * size + (row - tile_row * size).clamp(0, size - 1) * size + \
            (col - tile_col * size).clamp(0, size - 1)
        values = stack.reshape(-1)[flat]
        return torch.where(number >= 0, values, torch.zeros_like(values))


@dataclass(frozen=True)
class LaneLine:
    """One lane's centre line in the right-handed frame: ``points`` [n, 2] in its driving direction, its width
    ``widths`` [n] (m) at each, and whether it runs through a junction."""

    points: np.ndarray
    widths: np.ndarray
    in_junction: bool = False


@dataclass
class MapRaster:
    """A map's raster layers (see the module docstring): ``bits`` (DRIVABLE, MARKING, JUNCTION) and ``lights``
    (the index + 1 of the light whose stop line covers a cell, 0 elsewhere); ``num_lights`` lights."""

    bits: TiledGrid
    lights: TiledGrid
    num_lights: int


def build_map_raster(lanes: Sequence[LaneLine], stop_lines: StopLines, num_lights: int,
                     resolution: float = RESOLUTION_M) -> MapRaster:
    """The raster layers of a map from its lanes and its stop lines (CARLA coordinates, as
    :class:`~envs.carla.lights.StopLines` keeps them)."""
    dense = [_dense_lane(lane) for lane in lanes]
    points = [p for p, _ in dense] + [np.zeros((0, 2))]
    if len(stop_lines):
        points += [_right_handed(stop_lines.a), _right_handed(stop_lines.b)]
    everything = np.concatenate(points)
    origin = tuple(np.floor(everything.min(0) - MARGIN_M)) if len(everything) else (0.0, 0.0)
    bits = TiledGrid(origin, resolution, np.uint8)
    for lane, (centre, widths) in zip(lanes, dense, strict=True):
        bits.stamp(centre, widths / 2, DRIVABLE | (JUNCTION if lane.in_junction else 0))
    for lane, (centre, widths) in zip(lanes, dense, strict=True):
        if lane.in_junction or len(centre) < 2:
            continue
        tangent = np.gradient(centre, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / np.linalg.norm(tangent, axis=1, keepdims=True)
        for side in (1.0, -1.0):
            bits.stamp(centre + side * normal * widths[:, None] / 2, MARKING_RADIUS_M, MARKING)
    for tile in bits.tiles.values():  # markings never show inside junctions
        tile &= ~np.where(tile & JUNCTION, MARKING, 0).astype(np.uint8)
    lights = TiledGrid(origin, resolution, np.int16)
    for line in range(len(stop_lines)):
        a, b = _right_handed(stop_lines.a[line]), _right_handed(stop_lines.b[line])
        direction = _right_handed(stop_lines.direction[line])
        count = max(2, int(np.ceil(np.linalg.norm(b - a) / DENSE_SPACING_M)) + 1)
        band = a + np.linspace(0.0, 1.0, count)[:, None] * (b - a) - STOP_BAND_BACK_M * direction
        lights.stamp(band, STOP_BAND_RADIUS_M, int(stop_lines.light[line]) + 1, combine="set")
    return MapRaster(bits, lights, num_lights)


def lane_lines_from_graph(graph) -> list[LaneLine]:
    """The lanes of a :class:`~envs.carla.routes.LaneGraph` (one per lane segment, CARLA -> right-handed)."""
    lanes = []
    for nodes in graph.segment_nodes.values():
        points = _right_handed(graph.xyz[nodes, :2])
        lanes.append(LaneLine(points, graph.width[nodes].copy(), bool(graph.junction[nodes].any())))
    return lanes


def _right_handed(xy: np.ndarray) -> np.ndarray:
    """CARLA (x, y) points (or directions) [..., 2] -> right-handed (x, -y)."""
    out = np.array(xy, dtype=np.float64)
    out[..., 1] *= -1.0
    return out


def _dense_lane(lane: LaneLine) -> tuple[np.ndarray, np.ndarray]:
    """A lane's centre line at DENSE_SPACING_M and its width there (a lane of one distinct point: that point)."""
    points, widths = np.asarray(lane.points, dtype=np.float64), np.asarray(lane.widths, dtype=np.float64)
    if len(points) < 2 or np.linalg.norm(np.diff(points, axis=0), axis=1).max() <= 1e-6:
        return points[:1], widths[:1]
    dense, dense_widths, _ = densify(points, widths, DENSE_SPACING_M)
    return dense, dense_widths


def draw_rasters(frame: EgoFrame, town: MapRaster, worlds: Sequence[tuple[ActorStates, RouteData, float]]
                 ) -> torch.Tensor:
    """The rasters [N, 6, S, S] uint8 of worlds given as (actor states, route, the ego's arc length on it), in
    ``frame`` (see the module docstring)."""
    actors = [state for state, _, _ in worlds]
    num_worlds = len(worlds)
    dtype = frame.dtype
    pose = torch.from_numpy(np.stack([a.vehicle_pose[:, [0, 1, 5]] for a in actors])).to(dtype)  # [N, V, 3]
    x, y, yaw = pose[..., 0], -pose[..., 1], -torch.deg2rad(pose[..., 2])
    ego_x, ego_y, ego_yaw = x[:, 0], y[:, 0], yaw[:, 0]
    centres = frame.cell_centres(ego_x, ego_y, ego_yaw)
    flat, out, base = frame.blank(num_worlds, centres.device)
    bits = town.bits.lookup(centres)
    out[:, 0] = ((bits & DRIVABLE) > 0).to(torch.uint8) * 255
    out[:, 1] = ((bits & MARKING) > 0).to(torch.uint8) * 255
    if town.num_lights:
        light = town.lights.lookup(centres).long() - 1  # -1: no stop line
        states = torch.from_numpy(np.stack([to_sim_state(a.light_state) for a in actors]))  # [N, L]
        out[:, 5] = light_shades(states.gather(1, light.clamp(0, states.shape[1] - 1))) * (light >= 0)
    route_s = torch.tensor([s for _, _, s in worlds], dtype=dtype)
    route_end = torch.tensor([route.length for _, route, _ in worlds], dtype=dtype)
    arc = frame.route_arc_lengths(route_s, route_end).numpy()
    points = torch.from_numpy(np.stack([route.point_at(arc[w]) for w, (_, route, _) in enumerate(worlds)])).to(dtype)
    headings = torch.from_numpy(np.stack([route.heading_at(arc[w]) for w, (_, route, _) in enumerate(worlds)]))
    frame.splat(flat, base, 2, frame.widen(points, headings.to(dtype)), ego_x, ego_y, ego_yaw)
    if x.shape[1] > 1:
        extent = torch.from_numpy(np.stack([a.vehicle_extent[1:, :2] for a in actors])).to(dtype)  # half sizes
        valid = torch.from_numpy(np.stack([a.vehicle_valid[1:] for a in actors]))
        if valid.any():
            boxes = box_samples(x[:, 1:], y[:, 1:], yaw[:, 1:], 2 * extent[..., 0], 2 * extent[..., 1], frame.cell / 2)
            keep = valid[..., None].expand(-1, -1, boxes.shape[2])
            frame.splat(flat, base, 3, boxes.flatten(1, 2), ego_x, ego_y, ego_yaw, keep.flatten(1))
    if len(actors[0].walker_valid):
        walkers = torch.from_numpy(np.stack([a.walker_pose[:, :2] for a in actors])).to(dtype)
        valid = torch.from_numpy(np.stack([a.walker_valid for a in actors]))
        discs = disc_samples(walkers[..., 0], -walkers[..., 1], max(PEDESTRIAN_RADIUS_M, frame.cell / 2))
        keep = valid[..., None].expand(-1, -1, 9)
        frame.splat(flat, base, 4, discs.flatten(1, 2), ego_x, ego_y, ego_yaw, keep.flatten(1))
    return out.view(num_worlds, len(CHANNELS), frame.size, frame.size)


__all__ = ["LaneLine", "MapRaster", "TiledGrid", "build_map_raster", "draw_rasters", "lane_lines_from_graph"]
