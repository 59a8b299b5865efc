"""Towns stacked into padded torch tensors on the simulator's device, keyed by town seed.

Worlds refer to a town by its slot here; snapshots refer to it by seed, so a snapshot restores into any
simulator (another process, another device) that regenerates the same town from the same seed. Route
geometry is answered here, batched over worlds: a route is a sequence of lanes, and an arc length ``s``
along it maps to (lane, point) by a search over the lanes' cumulative start distances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from envs.sim.town import Town

_FAR = 1e9  # cumulative distance of padding lanes: never found by the search

CURVATURE_AHEAD_M = 6.0
"""The curvature stored with each lane point is the heading change over the next this many metres."""


def _curvature_ahead(town: Town) -> np.ndarray:
    """[L, P] signed curvature (1/m) from each point to CURVATURE_AHEAD_M further along its lane (0 at the
    end)."""
    headings = town.lane_headings.astype(np.float64)
    num_lanes, num_points = headings.shape
    spacing = town.lane_length / np.maximum(town.lane_num_points - 1, 1)
    steps = np.maximum(np.round(CURVATURE_AHEAD_M / np.maximum(spacing, 1e-6)).astype(int), 1)
    index = np.arange(num_points)[None, :]
    last = (town.lane_num_points - 1)[:, None]
    ahead = np.minimum(index + steps[:, None], last)
    turn = np.take_along_axis(headings, np.maximum(ahead, 0), 1) - headings
    turn = (turn + np.pi) % (2 * np.pi) - np.pi
    distance = (ahead - index) * spacing[:, None]
    return np.where(distance > 0, turn / np.maximum(distance, 1e-6), 0.0).astype(np.float32)


def _pad(arrays: list[np.ndarray], fill) -> np.ndarray:
    shape = np.max([a.shape for a in arrays], axis=0)
    out = np.full((len(arrays), *shape), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *tuple(slice(0, n) for n in a.shape))] = a
    return out


class TownBank:
    """All towns one simulator has used. ``slots_for(seeds)`` generates the missing ones (restacking)."""

    def __init__(self, make_town: Callable[[int], Town], device: torch.device):
        self._make_town = make_town
        self.device = device
        self.towns: list[Town] = []
        self._slot_of_seed: dict[int, int] = {}
        self.seed_of_slot = torch.zeros(0, dtype=torch.long, device=device)

    def slots_for(self, seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Bank slots of the towns with these seeds, generating and stacking any not yet here."""
        unique, inverse = torch.unique(torch.as_tensor(seeds, dtype=torch.long).cpu(), return_inverse=True)
        missing = [s for s in unique.tolist() if s not in self._slot_of_seed]
        for seed in missing:
            town = self._make_town(seed)
            self._slot_of_seed[seed] = len(self.towns)
            self.towns.append(town)
        if missing:
            self._stack()
        slots = torch.tensor([self._slot_of_seed[s] for s in unique.tolist()], dtype=torch.long)
        return slots[inverse].to(self.device)

    def _stack(self) -> None:
        towns, dev = self.towns, self.device
        resolutions = {t.raster_resolution for t in towns}
        if len(resolutions) != 1:
            raise ValueError(f"all towns of one simulator need one raster resolution, got {resolutions}")

        def tensor(name, fill, dtype=None):
            return torch.as_tensor(_pad([getattr(t, name) for t in towns], fill), dtype=dtype, device=dev)

        self.lane_points = tensor("lane_points", 0.0)  # [M, L, P, 2]
        self.lane_headings = tensor("lane_headings", 0.0)  # [M, L, P]
        self.lane_length = tensor("lane_length", 0.0)  # [M, L]
        # Metres between consecutive points of each lane (padding lanes get 1 to avoid dividing by 0).
        self.lane_spacing = self.lane_length / (tensor("lane_num_points", 2, torch.float32) - 1).clamp(min=1)
        self.lane_spacing = torch.where(self.lane_spacing > 0, self.lane_spacing, 1.0)
        # Packed tables for the hot path: one gather fetches a point's x, y, heading, the step to the next
        # point (dx, dy) and the curvature ahead (or a lane's length and spacing) instead of one gather per
        # array; a position between two points needs only the first one's row.
        points, headings = self.lane_points, self.lane_headings
        step = torch.cat([points[:, :, 1:] - points[:, :, :-1], torch.zeros_like(points[:, :, :1])], 2)
        curvature = torch.as_tensor(_pad([_curvature_ahead(t) for t in towns], 0.0), device=dev)
        self._point_table = torch.cat([points, headings[..., None], step, curvature[..., None]], -1).reshape(-1, 6)
        self._lane_table = torch.stack([self.lane_length, self.lane_spacing], -1).reshape(-1, 2)
        self.lane_in_junction = tensor("lane_in_junction", False)
        self.lane_light = tensor("lane_light", -1, torch.long)
        self.lane_successors = tensor("lane_successors", -1, torch.long)
        self.routes = tensor("routes", -1, torch.long)  # [M, NR, R]
        self.route_start_s = tensor("route_start_s", 0.0)  # [M, NR]
        self.route_length = tensor("route_length", 0.0)
        self.num_routes = torch.tensor([len(t.routes) for t in towns], device=dev)
        cums = []
        for t in towns:
            lengths = np.where(t.routes >= 0, t.lane_length[np.maximum(t.routes, 0)], 0.0)
            cum = np.concatenate([np.zeros((len(lengths), 1)), np.cumsum(lengths, 1)[:, :-1]], 1)
            cums.append(np.where(t.routes >= 0, cum, _FAR).astype(np.float32))
        self.route_cum = torch.as_tensor(_pad(cums, np.float32(_FAR)), device=dev)  # [M, NR, R]
        self.raster = tensor("raster", 0, torch.uint8)  # [M, H, W]
        self.raster_shape = torch.tensor([t.raster.shape for t in towns], device=dev)  # [M, 2] rows, cols
        self.raster_origin = torch.tensor([t.raster_origin for t in towns], dtype=torch.float32, device=dev)
        self.raster_resolution = resolutions.pop()
        self.seed_of_slot = torch.tensor([t.seed for t in towns], dtype=torch.long, device=dev)
        self._stack_living_world(tensor)

    def _stack_living_world(self, tensor) -> None:
        """Tables for traffic, lights, pedestrians and the raster observation (see :meth:`_stack`)."""
        towns, dev = self.towns, self.device
        num_slots, num_lanes = self.lane_length.shape
        self.num_lanes = torch.tensor([t.num_lanes for t in towns], device=dev)
        # Per-lane tables for traffic and pedestrians, one row per lane with a padding row in front of each
        # town's lanes, so lane -1 (no lane) reads as an empty lane: row of (slot, lane) is
        # slot * (max_lanes + 1) + lane + 1 (:meth:`lane_rows`).
        # Floats: length, point spacing, max curvature, edge right, edge left, in junction (0/1), length of the
        # single predecessor lane (0 if none or several).
        curvature = tensor("lane_max_curvature", 0.0)
        edges = torch.stack([tensor("lane_edge_right", 0.0), tensor("lane_edge_left", 0.0)], -1)
        predecessor = tensor("lane_predecessor", -1, torch.long)
        predecessor_length = torch.where(predecessor >= 0, self.lane_length.gather(1, predecessor.clamp(min=0)), 0.0)
        floats = torch.cat([self.lane_length[..., None], self.lane_spacing[..., None], curvature[..., None], edges,
                            self.lane_in_junction[..., None].float(), predecessor_length[..., None]], -1)
        # Ints: light, predecessor, number of successors, the only successor (-1 unless exactly one),
        # successors (-1 padded).
        successors = self.lane_successors
        count = (successors >= 0).sum(-1, keepdim=True)
        only = torch.where(count == 1, successors[..., :1], -1)
        ints = torch.cat([self.lane_light[..., None], predecessor[..., None], count, only, successors], -1)
        padding_floats = torch.zeros(num_slots, 1, floats.shape[-1], device=dev)
        padding_floats[..., 1] = 1.0  # spacing
        padding_ints = torch.full((num_slots, 1, ints.shape[-1]), -1, dtype=torch.long, device=dev)
        padding_ints[..., 2] = 0  # no successors
        self.lane_float_table = torch.cat([padding_floats, floats], 1).reshape(num_slots * (num_lanes + 1), -1)
        # int32: the traffic step works on int32 lane ids (much faster element-wise than int64 on CPU).
        self.lane_int_table = torch.cat([padding_ints, ints], 1).reshape(num_slots * (num_lanes + 1), -1).int()
        self.num_successor_slots = successors.shape[-1]
        # Lanes a traffic vehicle may spawn on (outside junctions), padded by repeating a valid one.
        spawnable = [np.flatnonzero(~t.lane_in_junction) for t in towns]
        width = max(len(lanes) for lanes in spawnable)
        self.spawn_lanes = torch.as_tensor(np.stack([np.resize(lanes, width) for lanes in spawnable]),
                                           dtype=torch.long, device=dev)  # [M, Ls]
        self.num_spawn_lanes = torch.tensor([len(lanes) for lanes in spawnable], device=dev)
        # Per light: junction, phase, the junction's number of phases (padding lights: phase 0 of 1).
        junctions = tensor("light_junction", 0, torch.long)
        phases = tensor("light_phase", 0, torch.long)
        num_phases = torch.as_tensor(_pad([t.junction_num_phases[t.light_junction] if len(t.light_junction)
                                           else np.ones(0, np.int32) for t in towns], 1), dtype=torch.long,
                                     device=dev)
        if junctions.shape[-1] == 0:  # no town has a light: one padding light keeps the table non-empty
            junctions = phases = torch.zeros(num_slots, 1, dtype=torch.long, device=dev)
            num_phases = torch.ones(num_slots, 1, dtype=torch.long, device=dev)
        self.num_lights_max = junctions.shape[1]
        # Per light, floats for envs.sim.lights: the junction's start in its cycle as a fraction of it
        # (frac(junction * golden ratio)), the light's phase, the junction's number of phases.
        golden = 0.6180339887498949
        self.light_float_table = torch.stack([torch.frac(junctions.double() * golden).float(), phases.float(),
                                              num_phases.float()], -1).reshape(-1, 3)
        self.num_junctions_max = int(junctions.max()) + 1
        self.light_table = torch.stack([junctions, phases, num_phases], -1).reshape(-1, 3)
        self.light_stop_point = tensor("light_stop_point", 0.0).reshape(num_slots, -1, 2)
        self.num_lights = torch.tensor([len(t.light_phase) for t in towns], device=dev)
        self.light_raster = tensor("light_raster", 0, torch.int16)  # [M, H, W]

    # --- queries, batched over worlds -------------------------------------------------------------

    def raster_bits(self, slot: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Raster bit fields under points ``xy`` [B, ..., 2] of worlds in towns ``slot`` [B]; 0 outside."""
        return self._lookup(self.raster, slot, xy)

    def lane_rows(self, slot: torch.Tensor, lane: torch.Tensor) -> torch.Tensor:
        """Rows of lanes ``lane`` [B, ...] (-1: no lane, an empty row) of worlds in towns ``slot`` [B] in
        ``lane_float_table`` / ``lane_int_table``."""
        extra = (1,) * (lane.dim() - 1)
        return slot.view(-1, *extra) * (self.lane_length.shape[1] + 1) + lane + 1

    def light_ids_under(self, slot: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Light id + 1 of the stop line under points ``xy`` [B, ..., 2] (0: none), like :meth:`raster_bits`."""
        return self._lookup(self.light_raster, slot, xy)

    def _lookup(self, raster: torch.Tensor, slot: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        shape = xy.shape[:-1]
        flat_slot = slot.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        origin = self.raster_origin[flat_slot]
        cell = torch.floor((xy - origin) / self.raster_resolution).long()
        col, row = cell[..., 0], cell[..., 1]
        size = self.raster_shape[flat_slot]
        inside = (row >= 0) & (col >= 0) & (row < size[..., 0]) & (col < size[..., 1])
        _, height, width = raster.shape
        index = (flat_slot * height + row.clamp(0, height - 1)) * width + col.clamp(0, width - 1)
        values = raster.reshape(-1)[index.reshape(-1)].reshape(shape)
        return values * inside

    def lane_pose(self, lane_flat: torch.Tensor, s: torch.Tensor, curvature: bool = False):
        """Points [..., 2] and headings [...] at arc lengths ``s`` on lanes given by flat index
        ``slot * max_lanes + lane`` (any shape, same as ``s``); ``s`` is clamped to the lane. With
        ``curvature``, also the signed curvature (1/m, + turning left) over the next CURVATURE_AHEAD_M."""
        num_points = self.lane_points.shape[2]
        length, spacing = self._lane_table.index_select(0, lane_flat.reshape(-1)).view(*s.shape, 2).unbind(-1)
        position = s.clamp(min=0.0).minimum(length) / spacing
        i0 = position.floor().clamp(0, num_points - 2)
        frac = (position - i0).clamp(0.0, 1.0).unsqueeze(-1)
        row = self._point_table.index_select(0, (lane_flat * num_points + i0.long()).reshape(-1)).view(*s.shape, 6)
        point = row[..., :2] + row[..., 3:5] * frac
        return (point, row[..., 2], row[..., 5]) if curvature else (point, row[..., 2])

    def route_lanes(self, slot: torch.Tensor, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lane ids [B, R] (-1 padded) and their cumulative start distances [B, R] along each route."""
        flat = slot * self.routes.shape[1] + route
        width = self.routes.shape[2]
        return (self.routes.view(-1, width).index_select(0, flat), self.route_cum.view(-1, width).index_select(0, flat))

    def route_geometry(self, slot: torch.Tensor, lanes: torch.Tensor, cum: torch.Tensor,
                       s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points [B, Q, 2], headings [B, Q] and route lane index [B, Q] at arc lengths ``s`` [B, Q].

        ``s`` beyond the last lane is clamped to its end; the route's lanes come from :meth:`route_lanes`.
        """
        index = (torch.searchsorted(cum, s.contiguous(), right=True) - 1).clamp(min=0)
        lane = lanes.gather(1, index).clamp(min=0)
        local = s - cum.gather(1, index)
        # Flat gathers: much cheaper than advanced indexing with several index tensors.
        lane_flat = slot[:, None] * self.lane_points.shape[1] + lane
        point, heading = self.lane_pose(lane_flat, local)
        return point, heading, index
