"""Pictures for people, drawn through the backend's picture capabilities (``backend.spec.pictures``: the built-in
simulator; CARLA and gymnasium envs have none, and then there are no pictures): the G branches of one snapshot on
one bird's-eye image with their returns (the dashboard's group picture), the evaluation's GIF frames with their
caption, and the GIF writer."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from envs.api import Backend

MAP_MARGIN_M = 25.0  # metres of map around a route in trajectory pictures (route deviation ends at 15 m)
GIF_SIZE, GIF_METRES = 256, 60.0  # GIF frames: pixels and metres per side, centred on the ego, north up
CAPTION_HEIGHT = 18  # pixels of the caption strip above each GIF frame


def branch_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct saturated colours, one per branch."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / count, 0.9, 1.0)) for i in range(count)]


def group_picture(backend: Backend, positions: torch.Tensor, returns: torch.Tensor, size: int = 320,
                  metres: float = 80.0) -> np.ndarray:
    """``positions`` [H + 1, G, 2] ego positions of trunk 0's branches (world 0 holds the chosen branch's end
    now); ``returns`` [G]. Returns uint8 [size, size + legend, 3]: the branches drawn on the map, and a legend
    giving each branch's colour and return, best first."""
    paths = positions.permute(1, 0, 2).numpy()
    colours = branch_colours(len(paths))
    view = backend.render_birdseye(0, size=size, metres=metres,
                                   trajectories=[(path, colour) for path, colour in zip(paths, colours, strict=True)])
    legend = Image.new("RGB", (150, size), (30, 30, 30))
    draw = ImageDraw.Draw(legend)
    draw.text((8, 6), "branch   return", fill=(230, 230, 230))
    for row, branch in enumerate(torch.argsort(returns, descending=True).tolist()):
        y = 24 + 16 * row
        draw.rectangle([8, y + 2, 20, y + 12], fill=colours[branch])
        draw.text((28, y), f"{branch:>2}  {returns[branch].item():8.2f}", fill=(230, 230, 230))
    return np.concatenate([view, np.asarray(legend)], axis=1)


def gif_frame(backend: Backend, world_id: int, seed: int, seconds: float, speed: float,
              completion: float = 0.0) -> np.ndarray:
    """A bird's-eye frame around world ``world_id``'s ego with a caption strip: route seed, time (s), speed (m/s),
    route completion (%)."""
    view = backend.render_birdseye(world_id, size=GIF_SIZE, metres=GIF_METRES)
    frame = Image.new("RGB", (GIF_SIZE, GIF_SIZE + CAPTION_HEIGHT), (24, 24, 24))
    frame.paste(Image.fromarray(view), (0, CAPTION_HEIGHT))
    ImageDraw.Draw(frame).text((4, 3), f"route {seed}  t {seconds:5.1f} s  {speed:4.1f} m/s  {completion:3.0f}%",
                               fill=(235, 235, 235))
    return np.asarray(frame, dtype=np.uint8)


def write_gif(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write RGB frames [H, W, 3] uint8 as a GIF that loops forever, creating parent folders.

    Each frame gets its own adaptive palette (Pillow's GIF optimiser). Pillow merges identical consecutive
    frames into one longer frame, so the file can hold fewer frames than given; playback time is kept.
    """
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    shape = np.asarray(frames[0]).shape
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"frames must be RGB arrays [H, W, 3], got shape {shape}")
    for index, frame in enumerate(frames):
        if np.asarray(frame).shape != shape:
            raise ValueError(f"frame {index} has shape {np.asarray(frame).shape}, frame 0 has {shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0, optimize=True)
    return path
