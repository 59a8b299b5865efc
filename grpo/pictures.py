"""Pictures for the dashboard: the G branches of one snapshot on one bird's-eye image, with their returns."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

from envs.sim.render import render_birdseye


def branch_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct saturated colours, one per branch."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / count, 0.9, 1.0)) for i in range(count)]


def group_picture(sim, positions: torch.Tensor, returns: torch.Tensor, size: int = 320,
                  metres: float = 80.0) -> np.ndarray:
    """``positions`` [H + 1, G, 2] ego positions of trunk 0's branches (world 0 holds the chosen branch's end
    now); ``returns`` [G]. Returns uint8 [size, size + legend, 3]: the branches drawn on the map, and a legend
    giving each branch's colour and return, best first."""
    paths = positions.permute(1, 0, 2).numpy()
    colours = branch_colours(len(paths))
    view = render_birdseye(sim, 0, size=size, metres=metres,
                           extra_trajectories=[(path, colour) for path, colour in zip(paths, colours, strict=True)])
    legend = Image.new("RGB", (150, size), (30, 30, 30))
    draw = ImageDraw.Draw(legend)
    draw.text((8, 6), "branch   return", fill=(230, 230, 230))
    for row, branch in enumerate(torch.argsort(returns, descending=True).tolist()):
        y = 24 + 16 * row
        draw.rectangle([8, y + 2, 20, y + 12], fill=colours[branch])
        draw.text((28, y), f"{branch:>2}  {returns[branch].item():8.2f}", fill=(230, 230, 230))
    return np.concatenate([view, np.asarray(legend)], axis=1)
