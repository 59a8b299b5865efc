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
        # Packed tables for the hot path: one gather fetches a point's x, y, heading (or a lane's length and
        # spacing) instead of one gather per array.
        self._point_table = torch.cat([self.lane_points, self.lane_headings[..., None]], -1).reshape(-1, 3)
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

    # --- queries, batched over worlds -------------------------------------------------------------

    def raster_bits(self, slot: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Raster bit fields under points ``xy`` [B, ..., 2] of worlds in towns ``slot`` [B]; 0 outside."""
        shape = xy.shape[:-1]
        flat_slot = slot.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        origin = self.raster_origin[flat_slot]
        cell = torch.floor((xy - origin) / self.raster_resolution).long()
        col, row = cell[..., 0], cell[..., 1]
        size = self.raster_shape[flat_slot]
        inside = (row >= 0) & (col >= 0) & (row < size[..., 0]) & (col < size[..., 1])
        _, height, width = self.raster.shape
        index = (flat_slot * height + row.clamp(0, height - 1)) * width + col.clamp(0, width - 1)
        bits = self.raster.reshape(-1)[index.reshape(-1)].reshape(shape)
        return torch.where(inside, bits, torch.zeros_like(bits))

    def route_lanes(self, slot: torch.Tensor, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lane ids [B, R] (-1 padded) and their cumulative start distances [B, R] along each route."""
        return self.routes[slot, route], self.route_cum[slot, route]

    def route_geometry(self, slot: torch.Tensor, lanes: torch.Tensor, cum: torch.Tensor,
                       s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points [B, Q, 2], headings [B, Q] and route lane index [B, Q] at arc lengths ``s`` [B, Q].

        ``s`` beyond the last lane is clamped to its end; the route's lanes come from :meth:`route_lanes`.
        """
        index = (torch.searchsorted(cum, s.contiguous(), right=True) - 1).clamp(min=0)
        lane = lanes.gather(1, index).clamp(min=0)
        local = s - cum.gather(1, index)
        # Flat gathers: much cheaper than advanced indexing with several index tensors.
        num_lanes, num_points = self.lane_points.shape[1], self.lane_points.shape[2]
        lane_flat = (slot[:, None] * num_lanes + lane).reshape(-1)
        length, spacing = self._lane_table.index_select(0, lane_flat).view(*s.shape, 2).unbind(-1)
        position = local.clamp(min=0.0).minimum(length) / spacing
        i0 = position.floor().long().clamp(0, num_points - 2)
        frac = (position - i0).clamp(0.0, 1.0).unsqueeze(-1)
        point_flat = lane_flat.view_as(i0) * num_points + i0
        both = self._point_table.index_select(0, torch.stack([point_flat, point_flat + 1]).reshape(-1))
        p0, p1 = both.view(2, *s.shape, 3).unbind(0)
        return p0[..., :2] + (p1[..., :2] - p0[..., :2]) * frac, p0[..., 2], index
