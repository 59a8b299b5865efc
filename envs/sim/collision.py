"""Overlap tests between oriented boxes (vehicles) and discs (pedestrians), batched by broadcasting.

Boxes are given by centre (x, y), heading ``yaw`` (counter-clockwise from +x), ``length`` along the heading
and ``width`` across it; every argument broadcasts, so one call tests [B] egos against [B, N] vehicles.
"""

from __future__ import annotations

import torch


def boxes_overlap(ax, ay, ayaw, alength, awidth, bx, by, byaw, blength, bwidth) -> torch.Tensor:
    """Whether box A and box B overlap (touching counts), by the separating axis theorem.

    Two rectangles are disjoint exactly when one of their four edge normals separates them: on that axis
    the distance between the centres exceeds the sum of the half-extents of their projections.
    """
    dx, dy = bx - ax, by - ay
    ac, as_ = torch.cos(ayaw), torch.sin(ayaw)
    bc, bs = torch.cos(byaw), torch.sin(byaw)
    cos_rel = (ac * bc + as_ * bs).abs()  # |cos| of the angle between the headings
    sin_rel = (ac * bs - as_ * bc).abs()
    al, aw, bl, bw = alength / 2, awidth / 2, blength / 2, bwidth / 2
    separated = (dx * ac + dy * as_).abs() > al + bl * cos_rel + bw * sin_rel  # A's forward axis
    separated |= (-dx * as_ + dy * ac).abs() > aw + bl * sin_rel + bw * cos_rel  # A's left axis
    separated |= (dx * bc + dy * bs).abs() > bl + al * cos_rel + aw * sin_rel  # B's forward axis
    separated |= (-dx * bs + dy * bc).abs() > bw + al * sin_rel + aw * cos_rel  # B's left axis
    return ~separated


def disc_box_overlap(cx, cy, radius, bx, by, byaw, blength, bwidth) -> torch.Tensor:
    """Whether a disc (centre, radius) and a box overlap: the disc's centre, in the box frame, is within
    ``radius`` of its nearest point of the box."""
    dx, dy = cx - bx, cy - by
    cos, sin = torch.cos(byaw), torch.sin(byaw)
    along = (dx * cos + dy * sin).abs() - blength / 2
    across = (-dx * sin + dy * cos).abs() - bwidth / 2
    return along.clamp(min=0) ** 2 + across.clamp(min=0) ** 2 <= radius * radius
