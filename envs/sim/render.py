"""Bird's-eye RGB images of the built-in simulator, for people: evaluation GIFs, trajectory maps and dashboard
images. :class:`~envs.sim.world.DrivingSim` offers them as the contract's picture capabilities (``render_birdseye``,
``route_map``), so the algorithm never imports this module.

Not an observation: policies see the privileged vector of envs.api (or a raster built for them); these
images only have to be readable. The town raster is cropped with numpy (nearest-neighbour, one lookup per
output pixel) and the vector parts (route, trajectories, vehicles, lights) are drawn over it with
``PIL.ImageDraw``.

View conventions of :func:`render_birdseye`: a square of ``metres`` x ``metres`` around its centre,
**north up** (world +y up, +x right) by default, so a GIF's background only slides and never spins and
the branches of a GRPO group drawn on one frame keep their compass directions; ``heading_up=True``
rotates the view so the ego always faces up (the driver's view, often easier to read for one car).

Drawing order, bottom to top: town raster, route ahead (translucent blue), extra trajectories, traffic
vehicles (blue), pedestrians (magenta discs), traffic lights (a red / yellow / green dot at each stop
line), the ego (orange). The world's own traffic, pedestrians and light states are drawn by default
(``world=True``); callers can add more ``actors`` and ``lights`` (documented on :func:`render_birdseye`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from envs.api import BackendError, MapView
from envs.driving.lights import GREEN, YELLOW
from envs.sim.town import RASTER_CLEARANCE, RASTER_DRIVABLE, RASTER_JUNCTION, RASTER_MARKING, Town

Color = tuple[int, int, int] | tuple[int, int, int, int]
DrivingSim = Any
"""An envs.sim.world.DrivingSim: not imported, because the simulator imports this module to draw itself."""

BACKGROUND_COLOR = (104, 120, 96)  # off-road: green-grey
PAVEMENT_COLOR = (168, 166, 156)  # kerb/pavement (clearance but not drivable)
ROAD_COLOR = (58, 58, 62)  # drivable lane surface
JUNCTION_COLOR = (66, 66, 70)  # drivable junction surface, a shade lighter than the road
MARKING_COLOR = (236, 232, 200)  # lane boundary lines, yellowish white
ROUTE_COLOR = (40, 120, 255, 130)  # the route ahead of the ego, translucent blue
EGO_COLOR = (255, 96, 0)  # bright orange: nothing else in the image uses it
ACTOR_COLOR = (60, 140, 230)  # traffic vehicles, and the default for actors that give no colour
PEDESTRIAN_COLOR = (225, 40, 200)  # magenta: pedestrians
OUTLINE_COLOR = (20, 20, 20)
LIGHT_COLORS = {"red": (230, 30, 30), "yellow": (250, 200, 20), "green": (40, 200, 60)}
TOWN_LIGHT_COLOR = (250, 200, 20)  # stop points in render_town, which knows no light state

ROUTE_WIDTH_M = 1.2
TRAJECTORY_WIDTH_M = 0.4
LIGHT_RADIUS_M = 1.0


def _raster_palette() -> np.ndarray:
    """Colour [256, 3] of every raster bit field; priority marking > junction > road > pavement."""
    palette = np.empty((256, 3), dtype=np.uint8)
    for bits in range(256):
        if bits & RASTER_MARKING:
            color = MARKING_COLOR
        elif bits & RASTER_DRIVABLE:
            color = JUNCTION_COLOR if bits & RASTER_JUNCTION else ROAD_COLOR
        elif bits & RASTER_CLEARANCE:
            color = PAVEMENT_COLOR
        else:
            color = BACKGROUND_COLOR
        palette[bits] = color
    return palette


RASTER_PALETTE = _raster_palette()


@dataclass(frozen=True)
class _View:
    """A square image of ``size`` pixels showing ``metres`` around (centre_x, centre_y), its up direction
    rotated by ``rotation`` rad counter-clockwise from north."""

    centre_x: float
    centre_y: float
    metres: float
    size: int
    rotation: float = 0.0

    @property
    def metres_per_pixel(self) -> float:
        return self.metres / self.size

    def pixel_centres_in_world(self) -> tuple[np.ndarray, np.ndarray]:
        """World x, y [size, size] of every pixel centre (row 0 is the top of the image)."""
        offsets = (np.arange(self.size) + 0.5 - self.size / 2) * self.metres_per_pixel
        right, up = np.meshgrid(offsets, -offsets)  # image right and up, metres
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        return self.centre_x + right * cos - up * sin, self.centre_y + right * sin + up * cos

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """World points [N, 2] -> PIL pixel coordinates [N, 2] (x right, y down, integers at pixel centres)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        dx, dy = points[:, 0] - self.centre_x, points[:, 1] - self.centre_y
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        right, up = dx * cos + dy * sin, -dx * sin + dy * cos
        return np.stack([self.size / 2 + right / self.metres_per_pixel - 0.5,
                         self.size / 2 - up / self.metres_per_pixel - 0.5], axis=1)

    def pixels(self, metres: float, minimum: int = 1) -> int:
        return max(minimum, round(metres / self.metres_per_pixel))


def _sample_raster(town: Town, view: _View) -> np.ndarray:
    """The town raster seen through ``view`` as RGB [size, size, 3] (nearest cell; outside the raster
    is off-road)."""
    x, y = view.pixel_centres_in_world()
    res = town.raster_resolution
    col = np.floor((x - town.raster_origin[0]) / res).astype(np.int64)
    row = np.floor((y - town.raster_origin[1]) / res).astype(np.int64)
    height, width = town.raster.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    bits = np.where(inside, town.raster[row.clip(0, height - 1), col.clip(0, width - 1)], 0)
    return RASTER_PALETTE[bits]


def _box_corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """Corners [4, 2] of a box centred at (x, y) facing ``yaw``: front-left, front-right, rear-right,
    rear-left."""
    forward = np.array([math.cos(yaw), math.sin(yaw)]) * length / 2
    left = np.array([-math.sin(yaw), math.cos(yaw)]) * width / 2
    centre = np.array([x, y])
    return np.stack([centre + forward + left, centre + forward - left, centre - forward - left,
                     centre - forward + left])


def _draw_box(draw: ImageDraw.ImageDraw, view: _View, x: float, y: float, yaw: float, length: float,
              width: float, color: Color) -> None:
    """An oriented filled box with a white triangle in its front third marking the heading."""
    corners = view.to_pixels(_box_corners(x, y, yaw, length, width))
    draw.polygon([tuple(p) for p in corners], fill=tuple(color), outline=OUTLINE_COLOR)
    forward = np.array([math.cos(yaw), math.sin(yaw)])
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    tip = np.array([x, y]) + forward * 0.45 * length
    base = np.array([x, y]) + forward * 0.2 * length
    marker = view.to_pixels(np.stack([tip, base + left * 0.3 * width, base - left * 0.3 * width]))
    draw.polygon([tuple(p) for p in marker], fill=(255, 255, 255))


def _draw_polyline(draw: ImageDraw.ImageDraw, view: _View, points: np.ndarray, color: Color,
                   width_px: int) -> None:
    pixels = view.to_pixels(points)
    if len(pixels) >= 2:
        draw.line([tuple(p) for p in pixels], fill=tuple(color), width=width_px, joint="curve")


def _route_ahead(sim: DrivingSim, world_id: int, from_start: bool = False) -> np.ndarray:
    """World points [N, 2] of the world's route every 1 m, from the ego's route position (or the route
    start) to the goal."""
    state = sim.state
    ids = slice(world_id, world_id + 1)
    slot, route = state.town_slot[ids], state.route_id[ids]
    start = float((state.route_start_s if from_start else state.route_s)[world_id])
    end = float(state.route_end_s[world_id])
    if end <= start:
        return np.zeros((0, 2))
    s = torch.cat([torch.arange(start, end, 1.0), torch.tensor([end])]).to(sim.device, torch.float32)
    lanes, cum = sim.bank.route_lanes(slot, route)
    points, _, _ = sim.bank.route_geometry(slot, lanes, cum, s[None])
    return points[0].cpu().numpy().astype(np.float64)


def render_birdseye(
    sim: DrivingSim,
    world_id: int,
    *,
    size: int = 256,
    metres: float = 60.0,
    ego_centred: bool = True,
    heading_up: bool = False,
    extra_trajectories: list[tuple[np.ndarray, Color]] | None = None,
    actors: list[dict] | None = None,
    lights: list[tuple[float, float, str]] | None = None,
    world: bool = True,
) -> np.ndarray:
    """A bird's-eye RGB image [size, size, 3] uint8 of world ``world_id`` of ``sim``.

    The view is ``metres`` x ``metres``; north up unless ``heading_up`` (then the ego faces up). With
    ``ego_centred`` the ego is at the image centre; without it the view is centred on the middle of the
    world's whole route (bounding-box centre), a fixed camera for a GIF of one episode, with ``metres``
    chosen by the caller to cover it.

    Drawn: the town (road dark grey, junctions a shade lighter, pavement light grey, lane markings
    yellowish white, off-road green-grey), the route from the ego's position to the goal as a translucent
    blue band, and the ego as an orange box (``sim.config.vehicle`` length and width) with a white
    triangle at its front.

    Optional layers, all in world coordinates (x east, y north, metres; yaw counter-clockwise from east):

    * ``extra_trajectories``: ``(points [N, 2], colour)`` polylines, e.g. the G branches of a GRPO group;
      colour is RGB, or RGBA for translucent lines.
    * ``actors``: other road users as oriented boxes, each a dict with keys ``x``, ``y``, ``yaw``,
      ``length``, ``width`` and optionally ``color`` (RGB; default blue). Pedestrians are small boxes
      (e.g. 0.6 x 0.6 m) with their own colour.
    * ``lights``: ``(stop_x, stop_y, state)`` with state ``"red"``, ``"yellow"`` or ``"green"``, drawn as
      a coloured dot at the stop point.
    * ``world``: draw the world's own traffic vehicles, pedestrians and light states (default); they come
      before ``actors`` and ``lights`` in drawing order.
    """
    if not 0 <= world_id < sim.num_worlds:
        raise ValueError(f"world_id must lie in [0, {sim.num_worlds}), got {world_id}")
    if not sim.bank.towns:
        raise BackendError("render_birdseye before reset(): the simulator has no town yet; call reset(seed)")
    if size < 8 or metres <= 0:
        raise ValueError(f"need size >= 8 pixels and metres > 0, got size={size}, metres={metres}")
    state, vehicle = sim.state, sim.config.vehicle
    ego_x, ego_y, ego_yaw = (float(v[world_id]) for v in (state.x, state.y, state.yaw))
    route = _route_ahead(sim, world_id)
    if ego_centred:
        centre = (ego_x, ego_y)
    else:
        whole_route = _route_ahead(sim, world_id, from_start=True)
        bounds = whole_route if len(whole_route) else np.array([[ego_x, ego_y]])
        centre = tuple((bounds.min(0) + bounds.max(0)) / 2)
    view = _View(centre[0], centre[1], metres, size, ego_yaw - math.pi / 2 if heading_up else 0.0)

    image = Image.fromarray(_sample_raster(sim.town(world_id), view)).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))  # translucent layers, composited once
    _draw_polyline(ImageDraw.Draw(overlay), view, route, ROUTE_COLOR, view.pixels(ROUTE_WIDTH_M, 2))
    image = Image.alpha_composite(image, overlay)
    if extra_trajectories:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for points, color in extra_trajectories:
            _draw_polyline(draw, view, np.asarray(points), color, view.pixels(TRAJECTORY_WIDTH_M, 2))
        image = Image.alpha_composite(image, overlay)

    draw = ImageDraw.Draw(image)
    if world:
        world_actors, world_lights = world_layers(sim, world_id)
        actors = world_actors + list(actors or [])
        lights = world_lights + list(lights or [])
    for actor in actors or []:
        missing = {"x", "y", "yaw", "length", "width"} - set(actor)
        if missing:
            raise ValueError(f"actor {actor} lacks keys {sorted(missing)}; give x, y, yaw, length, width "
                             "(and optionally color)")
        if actor.get("kind") == "pedestrian":
            (px, py), = view.to_pixels(np.array([[float(actor["x"]), float(actor["y"])]]))
            r = max(1.5, float(actor["length"]) / 2 / view.metres_per_pixel)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=tuple(actor.get("color", PEDESTRIAN_COLOR)),
                         outline=OUTLINE_COLOR)
            continue
        _draw_box(draw, view, float(actor["x"]), float(actor["y"]), float(actor["yaw"]), float(actor["length"]),
                  float(actor["width"]), actor.get("color", ACTOR_COLOR))
    radius = view.pixels(LIGHT_RADIUS_M, 2)
    for stop_x, stop_y, light_state in lights or []:
        if light_state not in LIGHT_COLORS:
            raise ValueError(f"light state must be one of {sorted(LIGHT_COLORS)}, got {light_state!r}")
        (px, py), = view.to_pixels(np.array([[stop_x, stop_y]]))
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=LIGHT_COLORS[light_state],
                     outline=OUTLINE_COLOR)
    _draw_box(draw, view, ego_x, ego_y, ego_yaw, vehicle.length, vehicle.width, EGO_COLOR)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def world_layers(sim: DrivingSim, world_id: int) -> tuple[list[dict], list[tuple[float, float, str]]]:
    """The world's traffic vehicles and pedestrians as ``actors`` dicts (pedestrians with ``kind`` =
    "pedestrian", drawn as discs) and its lights as ``(stop_x, stop_y, state)``, for render_birdseye."""
    state, config = sim.state, sim.config
    actors: list[dict] = []
    if config.traffic.num_vehicles:
        lane = state.traffic_lane[world_id].cpu()
        poses = torch.stack([state.traffic_x[world_id], state.traffic_y[world_id], state.traffic_yaw[world_id]]
                            ).cpu()
        for k in torch.nonzero(lane >= 0).flatten().tolist():
            x, y, yaw = poses[:, k].tolist()
            actors.append({"x": x, "y": y, "yaw": yaw, "length": config.vehicle.length,
                           "width": config.vehicle.width, "color": ACTOR_COLOR})
    if config.pedestrians.num_pedestrians:
        walking = (state.ped_time_left[world_id] > 0).cpu()
        poses = torch.stack([state.ped_x[world_id], state.ped_y[world_id], state.ped_vx[world_id],
                             state.ped_vy[world_id]]).cpu()
        for k in torch.nonzero(walking).flatten().tolist():
            x, y, vx, vy = poses[:, k].tolist()
            actors.append({"x": x, "y": y, "yaw": math.atan2(vy, vx), "length": 2 * config.pedestrians.radius,
                           "width": 2 * config.pedestrians.radius, "kind": "pedestrian", "color": PEDESTRIAN_COLOR})
    lights: list[tuple[float, float, str]] = []
    town = sim.town(world_id)
    if config.lights.enabled and len(town.light_phase):
        ids = torch.arange(len(town.light_phase), device=sim.device)[None, :]
        states = sim.light_state_of(ids, torch.tensor([world_id], device=sim.device))[0].tolist()
        names = {GREEN: "green", YELLOW: "yellow"}
        for (stop_x, stop_y), light_state in zip(town.light_stop_point.tolist(), states, strict=True):
            lights.append((stop_x, stop_y, names.get(light_state, "red")))
    return actors, lights


def route_map(sim: DrivingSim, world_id: int, margin_m: float = 25.0) -> MapView:
    """The town raster around world ``world_id``'s route (its bounding box plus ``margin_m``), in the renderer's
    colours, with the route's centre line every metre."""
    town, route = sim.town(world_id), _route_ahead(sim, world_id, from_start=True)
    res, (origin_x, origin_y) = town.raster_resolution, town.raster_origin
    low, high = route.min(0) - margin_m, route.max(0) + margin_m
    col0, col1 = math.floor((low[0] - origin_x) / res), math.ceil((high[0] - origin_x) / res)
    row0, row1 = math.floor((low[1] - origin_y) / res), math.ceil((high[1] - origin_y) / res)
    height, width = town.raster.shape
    bits = np.zeros((row1 - row0, col1 - col0), dtype=town.raster.dtype)  # outside the raster: off-road
    r0, r1, c0, c1 = max(row0, 0), min(row1, height), max(col0, 0), min(col1, width)
    if r0 < r1 and c0 < c1:
        bits[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = town.raster[r0:r1, c0:c1]
    image = RASTER_PALETTE[bits][::-1].copy()  # raster row 0 is the south edge; images put north up
    extent = (origin_x + col0 * res, origin_x + col1 * res, origin_y + row0 * res, origin_y + row1 * res)
    return MapView(image, extent, route, int(town.seed))


def render_town(town: Town, size: int = 512) -> np.ndarray:
    """The whole town, north up, as RGB [size, size, 3] uint8 (the raster downsampled to fit, padded with
    off-road colour), with traffic-light stop points as small amber dots. For docs and debugging."""
    height, width = town.raster.shape
    res = town.raster_resolution
    metres = max(height, width) * res
    view = _View(town.raster_origin[0] + width * res / 2, town.raster_origin[1] + height * res / 2, metres, size)
    image = Image.fromarray(_sample_raster(town, view))
    draw = ImageDraw.Draw(image)
    radius = view.pixels(LIGHT_RADIUS_M, 1)
    for px, py in view.to_pixels(town.light_stop_point):
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=TOWN_LIGHT_COLOR)
    return np.asarray(image, dtype=np.uint8).copy()
