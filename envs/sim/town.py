"""Static road network of one town, compiled into fixed-size arrays the batched simulator gathers from.

A town is built once from its lanes (centre-line polylines with connectivity) by :func:`build_town`, which
resamples every lane at :data:`POINT_SPACING_M`, rasterises the drivable area, the kerb clearance and the
lane markings, and plans a bank of routes. Everything in a :class:`Town` is immutable and a pure function
of its inputs, so a snapshot only has to name the town's seed: any process regenerates the same arrays.

Frames: world x east, y north, yaw counter-clockwise from +x, metres and radians. Traffic keeps right.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from envs.driving.raster import disc_cells

POINT_SPACING_M = 1.0
"""Lane centre lines are resampled evenly at this arc-length spacing or just below it (each lane gets a
whole number of equal segments), so point index = s / (lane_length / (lane_num_points - 1))."""

RASTER_DRIVABLE = 1  # on a lane or a junction surface
RASTER_CLEARANCE = 2  # drivable or kerb/pavement: a box corner outside this has hit something static
RASTER_MARKING = 4  # a lane boundary line (drawn outside junctions)
RASTER_JUNCTION = 8  # inside a junction
RASTER_ROUTE = 16  # reserved for per-world route drawing in bird's-eye views (never set in the town)


@dataclass(frozen=True)
class LaneSpec:
    """One lane as the procedural generator describes it, before compilation."""

    points: np.ndarray  # [n, 2] centre line in driving direction, any spacing
    width: float = 3.5
    successors: tuple[int, ...] = ()  # lanes a vehicle may continue into from this lane's end
    in_junction: bool = False  # a connector lane through a junction
    light: int = -1  # traffic light that governs entering this lane (junction connectors), or -1
    road: int = -1  # road id, shared by both directions of a road; -1 only for junction connectors (the route
    # planner never re-enters a road id, so non-junction lanes left at -1 would all count as one road)
    left_neighbour: int = -1  # adjacent same-direction lane to the left, for lane changes, or -1
    right_neighbour: int = -1


@dataclass(frozen=True)
class LightSpec:
    """A traffic light: which junction it belongs to and which phase of the junction cycle is green."""

    junction: int
    phase: int  # the junction's cycle gives green to phase 0, then phase 1, ... in turn
    stop_point: tuple[float, float]  # where the stop line crosses the controlled lane(s)


@dataclass(frozen=True)
class Town:
    """Compiled arrays of one town (numpy; the simulator stacks towns into a torch bank).

    L lanes, P points per lane (padded by repeating the last point), S successor slots, R route length in
    lanes, NR routes. ``raster`` is a bit field (``RASTER_*``) of shape [H, W]; cell (row i, col j) covers
    x in ``origin[0] + j*res`` .. +res and y in ``origin[1] + i*res`` .. +res.
    """

    seed: int
    lane_points: np.ndarray  # [L, P, 2] float32
    lane_headings: np.ndarray  # [L, P] float32, yaw of the centre line at each point
    lane_length: np.ndarray  # [L] float32 metres
    lane_num_points: np.ndarray  # [L] int32 real (unpadded) points per lane
    lane_width: np.ndarray  # [L] float32 metres
    lane_successors: np.ndarray  # [L, S] int32, -1 padded
    lane_in_junction: np.ndarray  # [L] bool
    lane_light: np.ndarray  # [L] int32, -1 where uncontrolled
    lane_road: np.ndarray  # [L] int32
    lane_left: np.ndarray  # [L] int32 left neighbour lane or -1
    lane_right: np.ndarray  # [L] int32 right neighbour lane or -1
    light_junction: np.ndarray  # [NL] int32
    light_phase: np.ndarray  # [NL] int32
    light_stop_point: np.ndarray  # [NL, 2] float32
    junction_num_phases: np.ndarray  # [NJ] int32
    lane_max_curvature: np.ndarray  # [L] float32 1/m, largest |curvature| of the centre line (speed in curves)
    lane_edge_right: np.ndarray  # [L] float32 m from the centre line to the drivable edge on the right
    lane_edge_left: np.ndarray  # [L] float32 m from the centre line to the drivable edge on the left (across
    # the oncoming lanes): a pedestrian crossing here walks edge_right + edge_left of road
    lane_predecessor: np.ndarray  # [L] int32 the only lane leading into this one, or -1 (none or several)
    light_raster: np.ndarray  # [H, W] int16 light id + 1 on the stop-line cells of its approach lanes, 0 elsewhere
    routes: np.ndarray  # [NR, R] int32 lane ids, -1 padded
    route_start_s: np.ndarray  # [NR] float32 offset of the route start on its first lane
    route_length: np.ndarray  # [NR] float32 metres from start to goal
    raster: np.ndarray  # [H, W] uint8 bit field
    raster_origin: tuple[float, float]
    raster_resolution: float

    @property
    def num_lanes(self) -> int:
        return self.lane_points.shape[0]

    def fingerprint(self) -> str:
        """Hash of the arrays: two towns with the same fingerprint are the same town."""
        digest = hashlib.sha256()
        for array in (self.lane_points, self.lane_headings, self.lane_width, self.lane_successors,
                      self.lane_in_junction, self.lane_light, self.light_phase, self.light_stop_point,
                      self.routes, self.route_start_s, self.raster, self.light_raster):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


def resample_polyline(points: np.ndarray, spacing: float) -> np.ndarray:
    """Evenly spaced points along ``points`` [n, 2], both ends included, at most ``spacing`` apart."""
    points = np.asarray(points, dtype=np.float64)
    segment = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], segment > 1e-9])  # drop repeated points
    points = points[keep]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if arc[-1] <= 0:
        raise ValueError("a lane needs a positive length")
    s = np.linspace(0.0, arc[-1], int(np.ceil(arc[-1] / spacing - 1e-9)) + 1)
    return np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], axis=1)


def build_town(
    seed: int,
    lanes: list[LaneSpec],
    lights: list[LightSpec],
    *,
    num_routes: int,
    route_length_m: float,
    kerb_width_m: float = 2.5,
    raster_resolution: float = 0.5,
    junction_polygons: list[np.ndarray] | None = None,
    margin_m: float = 20.0,
) -> Town:
    """Compile lanes into a :class:`Town` and plan ``num_routes`` routes of ``route_length_m`` each.

    Routes are random walks over the lane graph seeded by ``seed``; a walk never re-enters a road it has
    used, so routes do not loop. Raises ValueError when the lane graph admits no route that long.
    """
    resampled = [resample_polyline(lane.points, POINT_SPACING_M) for lane in lanes]
    num_points = max(len(p) for p in resampled)
    lane_points = np.stack([np.concatenate([p, np.repeat(p[-1:], num_points - len(p), 0)]) for p in resampled])
    lane_headings = np.stack([_headings(p, num_points) for p in resampled])
    lane_length = np.array([np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in resampled])
    num_successor_slots = max(1, max(len(lane.successors) for lane in lanes))
    successors = np.full((len(lanes), num_successor_slots), -1, dtype=np.int32)
    for i, lane in enumerate(lanes):
        successors[i, : len(lane.successors)] = lane.successors

    raster, origin = _rasterise(resampled, lanes, junction_polygons or [], kerb_width_m,
                                raster_resolution, margin_m)
    routes, route_start_s, route_length = _plan_routes(
        np.random.default_rng(seed), lanes, lane_length, num_routes, route_length_m)

    predecessors = np.full(len(lanes), -1, dtype=np.int32)
    for i, lane in enumerate(lanes):
        for nxt in lane.successors:
            predecessors[nxt] = i if predecessors[nxt] == -1 else -2
    predecessors[predecessors == -2] = -1  # several lanes lead in: no single predecessor
    edge_right, edge_left = _road_edges(raster, origin, raster_resolution, resampled)
    light_raster = _stop_lines(raster.shape, origin, raster_resolution, resampled, lanes)

    num_junctions = 1 + max([light.junction for light in lights], default=-1)
    junction_num_phases = np.ones(num_junctions, dtype=np.int32)
    for light in lights:
        junction_num_phases[light.junction] = max(junction_num_phases[light.junction], light.phase + 1)

    return Town(
        seed=seed,
        lane_points=lane_points.astype(np.float32),
        lane_headings=lane_headings.astype(np.float32),
        lane_length=lane_length.astype(np.float32),
        lane_num_points=np.array([len(p) for p in resampled], dtype=np.int32),
        lane_width=np.array([lane.width for lane in lanes], dtype=np.float32),
        lane_successors=successors,
        lane_in_junction=np.array([lane.in_junction for lane in lanes]),
        lane_light=np.array([lane.light for lane in lanes], dtype=np.int32),
        lane_road=np.array([lane.road for lane in lanes], dtype=np.int32),
        lane_left=np.array([lane.left_neighbour for lane in lanes], dtype=np.int32),
        lane_right=np.array([lane.right_neighbour for lane in lanes], dtype=np.int32),
        light_junction=np.array([light.junction for light in lights], dtype=np.int32).reshape(-1),
        light_phase=np.array([light.phase for light in lights], dtype=np.int32).reshape(-1),
        light_stop_point=np.array([light.stop_point for light in lights], dtype=np.float32).reshape(-1, 2),
        junction_num_phases=junction_num_phases,
        lane_max_curvature=np.array([_max_curvature(p) for p in resampled], dtype=np.float32),
        lane_edge_right=edge_right,
        lane_edge_left=edge_left,
        lane_predecessor=predecessors,
        light_raster=light_raster,
        routes=routes,
        route_start_s=route_start_s.astype(np.float32),
        route_length=route_length.astype(np.float32),
        raster=raster,
        raster_origin=origin,
        raster_resolution=raster_resolution,
    )


def _headings(points: np.ndarray, num_points: int) -> np.ndarray:
    delta = np.diff(points, axis=0)
    yaw = np.arctan2(delta[:, 1], delta[:, 0])
    yaw = np.concatenate([yaw, yaw[-1:]])
    return np.concatenate([yaw, np.repeat(yaw[-1:], num_points - len(yaw))])


def _max_curvature(points: np.ndarray) -> float:
    """Largest |curvature| (1/m) along a resampled centre line: heading change between segments two apart
    over the distance between their middles (so one kinked sample does not dominate)."""
    delta = np.diff(points, axis=0)
    yaw = np.unwrap(np.arctan2(delta[:, 1], delta[:, 0]))
    arc = np.linalg.norm(delta, axis=1)
    if len(yaw) < 2:
        return 0.0
    span = min(2, len(yaw) - 1)
    turn = np.abs(yaw[span:] - yaw[:-span])
    between = arc[:-span] / 2 + arc[span:] / 2 + (arc[1:-1] if span == 2 else 0.0)
    return float((turn / np.maximum(between, 1e-3)).max())


def _road_edges(raster: np.ndarray, origin, res: float, resampled: list[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per lane, metres from the centre line at its middle point to the first non-drivable cell on the right
    and on the left (a ray cast on the raster, 0.25 m steps, at most 40 m)."""
    steps = np.arange(0.25, 40.0, 0.25)
    height, width = raster.shape
    out = np.zeros((2, len(resampled)), dtype=np.float32)
    for lane, points in enumerate(resampled):
        k = len(points) // 2
        tangent = points[min(k + 1, len(points) - 1)] - points[max(k - 1, 0)]
        left = np.array([-tangent[1], tangent[0]]) / np.linalg.norm(tangent)
        for side, normal in enumerate((-left, left)):
            ray = points[k] + steps[:, None] * normal
            col = np.floor((ray[:, 0] - origin[0]) / res).astype(int)
            row = np.floor((ray[:, 1] - origin[1]) / res).astype(int)
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            bits = np.where(inside, raster[row.clip(0, height - 1), col.clip(0, width - 1)], 0)
            off = np.flatnonzero((bits & RASTER_DRIVABLE) == 0)
            out[side, lane] = steps[off[0]] - 0.125 if len(off) else steps[-1]
    return out[0], out[1]


def _stop_lines(shape, origin, res: float, resampled: list[np.ndarray], lanes: list[LaneSpec]) -> np.ndarray:
    """[H, W] int16: light id + 1 on a 1 m band across the end of every lane that enters a lit connector."""
    light_raster = np.zeros(shape, dtype=np.int16)
    for points, lane in zip(resampled, lanes, strict=True):
        lit = {lanes[n].light for n in lane.successors if lanes[n].light >= 0}
        if not lit or len(points) < 2:
            continue
        tangent = (points[-1] - points[-2]) / np.linalg.norm(points[-1] - points[-2])
        normal = np.array([-tangent[1], tangent[0]])
        across = np.linspace(-lane.width / 2 + 0.25, lane.width / 2 - 0.25, int(np.ceil(lane.width / 0.25)))
        band = points[-1] - 0.5 * tangent + across[:, None] * normal
        mask = np.zeros(shape, dtype=np.uint8)
        _stamp(mask, band, 0.5, 1, origin, res)
        light_raster[mask > 0] = min(lit) + 1
    return light_raster


def _stamp(raster: np.ndarray, centres: np.ndarray, radius: float, bit: int, origin, res: float) -> None:
    """Set ``bit`` in every cell whose centre lies within ``radius`` of any of ``centres`` [n, 2]."""
    if len(centres) == 0:
        return
    rows, cols = disc_cells(centres, radius, origin, res)
    height, width = raster.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    raster[rows[inside], cols[inside]] |= bit


def _fill_polygon(raster: np.ndarray, polygon: np.ndarray, bit: int, origin, res: float) -> None:
    """Set ``bit`` in cells whose centre lies inside the simple polygon [n, 2] (even-odd rule)."""
    lo = np.floor((polygon.min(0) - origin) / res).astype(int)
    hi = np.ceil((polygon.max(0) - origin) / res).astype(int)
    cols = np.arange(max(lo[0], 0), min(hi[0] + 1, raster.shape[1]))
    rows = np.arange(max(lo[1], 0), min(hi[1] + 1, raster.shape[0]))
    x = origin[0] + (cols[None, :] + 0.5) * res
    y = origin[1] + (rows[:, None] + 0.5) * res
    inside = np.zeros((len(rows), len(cols)), dtype=bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_cross)
    raster[np.ix_(rows, cols)] |= np.where(inside, bit, 0).astype(np.uint8)


def _rasterise(resampled, lanes, junction_polygons, kerb_width, res, margin):
    everything = np.concatenate(resampled)
    origin = tuple(np.floor(everything.min(0) - margin))
    extent = everything.max(0) + margin - np.array(origin)
    raster = np.zeros((int(np.ceil(extent[1] / res)), int(np.ceil(extent[0] / res))), dtype=np.uint8)
    # Dense centre-line samples so stamped discs overlap into a smooth band (scallop < 2 cm at 0.25 m).
    for points, lane in zip(resampled, lanes, strict=True):
        dense = resample_polyline(points, 0.25)
        half = lane.width / 2
        _stamp(raster, dense, half, RASTER_DRIVABLE, origin, res)
        _stamp(raster, dense, half + kerb_width, RASTER_CLEARANCE, origin, res)
        if lane.in_junction:
            _stamp(raster, dense, half, RASTER_JUNCTION, origin, res)
    for polygon in junction_polygons:
        _fill_polygon(raster, polygon, RASTER_DRIVABLE | RASTER_JUNCTION, origin, res)
        # The junction surface gets the same kerb band as the roads, so cutting a corner is not a crash.
        boundary = resample_polyline(np.concatenate([polygon, polygon[:1]]), 0.25)
        _stamp(raster, boundary, kerb_width, RASTER_CLEARANCE, origin, res)
    raster |= np.where(raster & RASTER_DRIVABLE, RASTER_CLEARANCE, 0).astype(np.uint8)
    for points, lane in zip(resampled, lanes, strict=True):
        if lane.in_junction:
            continue
        dense = resample_polyline(points, 0.25)
        tangent = np.gradient(dense, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / np.linalg.norm(tangent, axis=1, keepdims=True)
        for side in (1.0, -1.0):
            _stamp(raster, dense + side * normal * lane.width / 2, 0.6 * res, RASTER_MARKING, origin, res)
    # Markings never show inside junctions.
    raster &= ~np.where(raster & RASTER_JUNCTION, RASTER_MARKING, 0).astype(np.uint8)
    return raster, origin


def _plan_routes(rng, lanes, lane_length, num_routes, route_length_m, max_attempts=200):
    starts = [i for i, lane in enumerate(lanes) if not lane.in_junction]
    if not starts:
        raise ValueError("town has no lane outside a junction to start a route on")
    routes, start_s, lengths = [], [], []
    for _ in range(num_routes):
        for _attempt in range(max_attempts):
            lane = int(rng.choice(starts))
            s0 = float(rng.uniform(0.0, 0.5 * lane_length[lane]))
            path, total, used_roads = [lane], lane_length[lane] - s0, {lanes[lane].road}
            while total < route_length_m:
                options = [n for n in lanes[path[-1]].successors
                           if lanes[n].in_junction or lanes[n].road not in used_roads]
                # A connector is only useful if it leads to a road the route has not used.
                options = [n for n in options if not lanes[n].in_junction or any(
                    lanes[m].road not in used_roads for m in lanes[n].successors)]
                if not options:
                    break
                nxt = int(rng.choice(options))
                path.append(nxt)
                used_roads.add(lanes[nxt].road)
                total += lane_length[nxt]
            if total >= route_length_m:
                routes.append(path)
                start_s.append(s0)
                lengths.append(route_length_m)
                break
        else:
            raise ValueError(f"no route of {route_length_m} m found in {max_attempts} attempts; "
                             "use a shorter env.route_length_m or a larger town")
    width = max(len(r) for r in routes)
    table = np.full((num_routes, width), -1, dtype=np.int32)
    for i, route in enumerate(routes):
        table[i, : len(route)] = route
    return table, np.array(start_s), np.array(lengths)
