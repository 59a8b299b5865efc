"""Routes on a CARLA map: our own planner on ``carla.Map.get_topology()``, and leaderboard route files.

The ``carla`` wheel has no ``agents`` package (no GlobalRoutePlanner), so :class:`LaneGraph` builds a lattice
from the topology: every lane segment (road, section, lane) is sampled every ``resolution`` metres along its
driving direction; consecutive samples are joined, the last sample of a segment is joined to the first
sample of each successor the topology lists, and where a lane change is allowed (same direction, driving
lane, marking permits it) a sample is joined to the neighbouring lane a few metres ahead, at an extra cost.
Then:

* :func:`plan_random_route` -- a training route of a requested length: a random walk from a seeded start
  (a random point of a random lane), turning at random at each branch, backtracking from dead ends.
* :func:`plan_route` -- the shortest path (Dijkstra) through a list of key points, as the leaderboard
  interpolates its sparse route waypoints.
* :func:`parse_route_xml` / :func:`load_route_file` -- leaderboard 1.0 (``<waypoint x= y= z=/>``) and
  leaderboard 2.0 / Bench2Drive (``<waypoints><position x= y= z=/></waypoints>``) route files.

Coordinates are CARLA's world frame (x forward, y right, z up, yaw in degrees clockwise seen from above),
as in route files; :mod:`envs.carla.state` converts to the right-handed ego frame of the observation.
Planning is deterministic: the same map, settings and seed give the same route, so a snapshot stores only a
route's key, and the route is planned again where it is restored.
"""

from __future__ import annotations

import heapq
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.api import BackendError

LANE_CHANGE_AHEAD_M = 8.0  # metres travelled along the road while changing lanes
LANE_CHANGE_EVERY_M = 5.0  # a lane-change edge is offered every this many metres of a lane


class RoutePlanningError(BackendError):
    """No route could be planned (no path between key points, no lane long enough, ...)."""


# --- route files -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteSpec:
    """One route of a route file: its id, town and sparse key points (CARLA world coordinates, metres)."""

    id: str
    town: str
    keypoints: tuple[tuple[float, float, float], ...]


def parse_route_xml(text: str) -> list[RouteSpec]:
    """Routes of a leaderboard / Bench2Drive XML document, in file order.

    Accepts ``<routes><route id=.. town=..>`` with either ``<waypoints><position x= y= z=/>...</waypoints>``
    (leaderboard 2.0, Bench2Drive) or ``<waypoint x= y= z= .../>`` children (leaderboard 1.0); other
    children (weathers, scenarios) are ignored. A route needs at least two key points."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise RoutePlanningError(f"route file is not valid XML: {error}") from error
    routes = [root] if root.tag == "route" else list(root.iter("route"))
    out = []
    for number, route in enumerate(routes):
        route_id = route.get("id", str(number))
        town = route.get("town")
        if not town:
            raise RoutePlanningError(f"route {route_id} has no town attribute")
        container = route.find("waypoints")
        elements = container.findall("position") if container is not None else route.findall("waypoint")
        points = []
        for element in elements:
            try:
                points.append((float(element.get("x")), float(element.get("y")), float(element.get("z", 0.0))))
            except (TypeError, ValueError) as error:
                raise RoutePlanningError(f"route {route_id}: a key point needs numeric x and y, got "
                                         f"{dict(element.attrib)}") from error
        if len(points) < 2:
            raise RoutePlanningError(f"route {route_id} has {len(points)} key points; a route needs at least 2")
        out.append(RouteSpec(route_id, town, tuple(points)))
    if not out:
        raise RoutePlanningError("route file holds no <route> element")
    return out


def load_route_file(path: str | Path, town: str | None = None) -> list[RouteSpec]:
    """Routes of the file at ``path``; with ``town``, only that town's (error if none)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RoutePlanningError(f"route file {path} does not exist")
    routes = parse_route_xml(path.read_text())
    if town is None:
        return routes
    kept = [r for r in routes if town_matches(r.town, town)]
    if not kept:
        towns = sorted({r.town for r in routes})
        raise RoutePlanningError(f"route file {path} has no route in town {town!r} (its towns: {towns}); set "
                                 "env.town to one of them")
    return kept


def town_matches(route_town: str, town: str) -> bool:
    """Town03 matches Town03, Carla/Maps/Town03 and Town03_Opt (a route file names the map without layers)."""
    def base(name: str) -> str:
        name = name.rsplit("/", 1)[-1]
        return name[:-4] if name.endswith("_Opt") else name

    return base(route_town) == base(town)


# --- routes -------------------------------------------------------------------------------------------------------

@dataclass
class Route:
    """A dense route: ``points`` [P, 2] (CARLA x, y) every ``resolution`` metres, their heights ``z`` [P],
    arc length ``s`` [P] (s[0] = 0), headings ``yaw`` [P] (CARLA degrees) and the (road id, lane id) sequence
    it drives through."""

    points: np.ndarray
    z: np.ndarray
    s: np.ndarray
    yaw: np.ndarray
    lanes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def start_pose(self) -> tuple[float, float, float, float]:
        """(x, y, z, yaw in degrees) of the route's first point."""
        return float(self.points[0, 0]), float(self.points[0, 1]), float(self.z[0]), float(self.yaw[0])


def densify(points: np.ndarray, z: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a polyline [N, 2] (heights [N]) to points ``spacing`` metres apart along its length (the last
    point kept); returns points, heights and arc lengths. Repeated points are dropped first."""
    points = np.asarray(points, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    points, z = points[keep], z[keep]
    if len(points) < 2:
        raise RoutePlanningError("a route needs at least two distinct points")
    cumulative = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    stations = np.arange(0.0, cumulative[-1], spacing)
    if cumulative[-1] - stations[-1] > 1e-6:
        stations = np.append(stations, cumulative[-1])
    xs = np.interp(stations, cumulative, points[:, 0])
    ys = np.interp(stations, cumulative, points[:, 1])
    zs = np.interp(stations, cumulative, z)
    dense = np.stack([xs, ys], axis=1)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    return dense, zs, s


def polyline_yaw(points: np.ndarray) -> np.ndarray:
    """CARLA yaw (degrees) of each point of a polyline [N, 2], from the segment leaving it (the last point
    takes the last segment's)."""
    delta = np.diff(points, axis=0)
    yaw = np.degrees(np.arctan2(delta[:, 1], delta[:, 0]))
    return np.append(yaw, yaw[-1])


# --- the lane graph ----------------------------------------------------------------------------------------------

class LaneGraph:
    """A lattice of lane samples built from ``carla_map.get_topology()`` (see the module docstring).

    Node arrays: ``xyz`` [N, 3], ``yaw`` [N] (degrees), ``width`` [N] (the lane's width, m), ``road`` / ``lane``
    [N] ids, ``junction`` [N] bool, ``segment`` [N]. ``successors[n]`` lists (next node, cost in metres, is a
    lane change)."""

    def __init__(self, carla_map, resolution: float = 2.0, lane_change_cost_m: float = 10.0):
        import carla

        self.map = carla_map
        self.resolution = resolution
        self.lane_change_cost_m = lane_change_cost_m
        topology = carla_map.get_topology()
        starts: dict[tuple[int, int, int], object] = {}
        links: set[tuple[tuple[int, int, int], tuple[int, int, int]]] = set()
        for entry, exit_ in topology:
            entry_key, exit_key = _key(entry), _key(exit_)
            starts.setdefault(entry_key, entry)
            if exit_key != entry_key:  # a lane without successors is listed as (its start, its end)
                starts.setdefault(exit_key, exit_)  # the start of the successor lane
                links.add((entry_key, exit_key))
        # Lanes the topology leaves out (dead ends at the map's border) still carry routes and lane changes.
        for waypoint in carla_map.generate_waypoints(max(resolution, 2.0)):
            key = _key(waypoint)
            if key not in starts and waypoint.lane_type == carla.LaneType.Driving:
                starts[key] = _walk(waypoint, key, resolution, "previous")[-1]
        xyz, yaw, width, road, lane, junction, segment = [], [], [], [], [], [], []
        self.segment_keys = sorted(starts)
        self.segment_nodes: dict[tuple[int, int, int], np.ndarray] = {}
        waypoints = []
        for index, key in enumerate(self.segment_keys):
            start = starts[key]
            samples = _walk(start, key, resolution, "next")
            first = len(xyz)
            for w in samples:
                location, rotation = w.transform.location, w.transform.rotation
                xyz.append((location.x, location.y, location.z))
                yaw.append(rotation.yaw)
                width.append(w.lane_width)
                road.append(w.road_id)
                lane.append(w.lane_id)
                junction.append(w.is_junction)
                segment.append(index)
            waypoints.extend(samples)
            self.segment_nodes[key] = np.arange(first, len(xyz))
        self.xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        self.yaw = np.asarray(yaw, dtype=np.float64)
        self.width = np.asarray(width, dtype=np.float64)
        self.road = np.asarray(road, dtype=np.int64)
        self.lane = np.asarray(lane, dtype=np.int64)
        self.junction = np.asarray(junction, dtype=bool)
        self.segment = np.asarray(segment, dtype=np.int64)
        if len(self.xyz) == 0:
            raise RoutePlanningError(f"map {carla_map.name} has no driving lanes")
        self.successors: list[list[tuple[int, float, bool]]] = [[] for _ in range(len(self.xyz))]
        for nodes in self.segment_nodes.values():
            for a, b in zip(nodes[:-1], nodes[1:], strict=True):
                self.successors[a].append((int(b), self._distance(a, b), False))
        for a_key, b_key in sorted(links):
            if a_key in self.segment_nodes and b_key in self.segment_nodes:
                a, b = int(self.segment_nodes[a_key][-1]), int(self.segment_nodes[b_key][0])
                self.successors[a].append((b, self._distance(a, b), False))
        self._add_lane_changes(waypoints)

    def _distance(self, a: int, b: int) -> float:
        return float(np.linalg.norm(self.xyz[a, :2] - self.xyz[b, :2]))

    def _add_lane_changes(self, waypoints: list) -> None:
        import carla

        every = max(1, round(LANE_CHANGE_EVERY_M / self.resolution))
        ahead = max(1, round(LANE_CHANGE_AHEAD_M / self.resolution))
        for nodes in self.segment_nodes.values():
            for position in range(0, len(nodes), every):
                node = int(nodes[position])
                w = waypoints[node]
                if w.is_junction:
                    continue
                for side, allowed in ((w.get_left_lane, carla.LaneChange.Left),
                                      (w.get_right_lane, carla.LaneChange.Right)):
                    if not (w.lane_change & allowed):
                        continue
                    other = side()
                    if other is None or other.lane_type != carla.LaneType.Driving or other.lane_id * w.lane_id <= 0:
                        continue  # no lane, not a driving lane, or the opposite direction
                    target_nodes = self.segment_nodes.get(_key(other))
                    if target_nodes is None:
                        continue
                    location = other.transform.location
                    gaps = np.linalg.norm(self.xyz[target_nodes, :2] - (location.x, location.y), axis=1)
                    nearest = int(np.argmin(gaps))
                    target = int(target_nodes[min(nearest + ahead, len(target_nodes) - 1)])
                    self.successors[node].append((target, self._distance(node, target) + self.lane_change_cost_m, True))

    # --- locating points ---

    def nearest_node(self, x: float, y: float, z: float = 0.0) -> int:
        """The lattice node on the lane ``map.get_waypoint`` projects (x, y, z) to, nearest the point."""
        import carla

        waypoint = self.map.get_waypoint(carla.Location(x=x, y=y, z=z), project_to_road=True,
                                         lane_type=carla.LaneType.Driving)
        nodes = None if waypoint is None else self.segment_nodes.get(_key(waypoint))
        if nodes is None:
            nodes = np.arange(len(self.xyz))
        return int(nodes[np.argmin(np.linalg.norm(self.xyz[nodes, :2] - (x, y), axis=1))])

    # --- searches ---

    def shortest_path(self, start: int, goal: int) -> list[int]:
        """Dijkstra over the lattice: node path from ``start`` to ``goal`` (RoutePlanningError if none)."""
        if start == goal:
            return [start]
        best = {start: 0.0}
        parent: dict[int, int] = {}
        heap = [(0.0, start)]
        while heap:
            cost, node = heapq.heappop(heap)
            if node == goal:
                break
            if cost > best.get(node, math.inf):
                continue
            for successor, step, _ in self.successors[node]:
                candidate = cost + step
                if candidate < best.get(successor, math.inf):
                    best[successor] = candidate
                    parent[successor] = node
                    heapq.heappush(heap, (candidate, successor))
        if goal not in parent:
            raise RoutePlanningError(f"no drivable path from {tuple(np.round(self.xyz[start], 1))} to "
                                     f"{tuple(np.round(self.xyz[goal], 1))}")
        path = [goal]
        while path[-1] != start:
            path.append(parent[path[-1]])
        return path[::-1]

    def random_walk(self, start: int, length_m: float, rng: np.random.Generator) -> list[int] | None:
        """A path of at least ``length_m`` metres from ``start`` that follows lanes (no lane changes) and picks a
        random successor at each branch; backtracks from dead ends. None if every branch dead-ends sooner."""
        path, travelled = [start], [0.0]
        options: list[list[tuple[int, float]]] = [self._forward(start, rng)]
        while travelled[-1] < length_m:
            if options[-1]:
                node, step = options[-1].pop()
                path.append(node)
                travelled.append(travelled[-1] + step)
                options.append(self._forward(node, rng))
            else:  # dead end: go back to the last node with an untried successor
                path.pop()
                travelled.pop()
                options.pop()
                if not path:
                    return None
            if len(path) > 100 * (length_m / self.resolution + 10):
                return None  # guards against pathological cycles of tiny segments
        return path

    def _forward(self, node: int, rng: np.random.Generator) -> list[tuple[int, float]]:
        choices = [(n, c) for n, c, lane_change in self.successors[node] if not lane_change]
        order = rng.permutation(len(choices))
        return [choices[i] for i in order]

    def route_from_nodes(self, nodes: list[int], spacing: float, length_m: float | None = None) -> Route:
        """The dense route through lattice ``nodes``, cut to its first ``length_m`` metres if given."""
        points, z, s = densify(self.xyz[nodes, :2], self.xyz[nodes, 2], spacing)
        along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.xyz[nodes, :2], axis=0), axis=1))])
        lanes: list[tuple[int, int]] = []
        for node, distance in zip(nodes, along, strict=True):
            if length_m is not None and distance > length_m:
                break
            pair = (int(self.road[node]), int(self.lane[node]))
            if not lanes or lanes[-1] != pair:
                lanes.append(pair)
        route = Route(points, z, s, polyline_yaw(points), lanes)
        return route if length_m is None else cut_route(route, length_m)


def _key(waypoint) -> tuple[int, int, int]:
    return int(waypoint.road_id), int(waypoint.section_id), int(waypoint.lane_id)


def _walk(waypoint, key: tuple[int, int, int], step: float, direction: str) -> list:
    """Waypoints every ``step`` metres from ``waypoint`` to its lane's end (``"next"``) or start
    (``"previous"``) while they stay on lane ``key``, closing the last gap with shorter steps.

    Written with ``next`` / ``previous`` because ``next_until_lane_end`` and ``previous_until_lane_start`` fail
    on lanes that end at the map's border (0.9.16 raises "distance > 0.0" or crashes)."""
    out = [waypoint]
    for length in (step, step / 2, step / 4, 0.1):
        while len(out) < 1_000_000:
            ahead = [w for w in getattr(out[-1], direction)(length) if _key(w) == key]
            if not ahead:
                break
            out.append(ahead[0])
    return out


def plan_random_route(graph: LaneGraph, length_m: float, seed: int, spacing: float = 1.0,
                      attempts: int = 50) -> Route:
    """A route of ``length_m`` metres from a start drawn from ``seed`` (a point off junctions, uniformly over
    lane length); the walk's end is cut to the exact length."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(~graph.junction)
    if len(candidates) == 0:
        candidates = np.arange(len(graph.xyz))
    for _ in range(attempts):
        start = int(candidates[rng.integers(len(candidates))])
        nodes = graph.random_walk(start, length_m, rng)
        if nodes is None:
            continue
        return graph.route_from_nodes(nodes, spacing, length_m)
    raise RoutePlanningError(f"found no route of {length_m:.0f} m in {attempts} tries on map {graph.map.name}: its "
                             "lanes may be shorter; lower env.route_length_m")


def plan_route(graph: LaneGraph, keypoints, spacing: float = 1.0) -> Route:
    """The shortest drivable route through ``keypoints`` [(x, y, z), ...] (CARLA coordinates), in order."""
    nodes: list[int] = []
    snapped = [graph.nearest_node(*point) for point in keypoints]
    for a, b in zip(snapped[:-1], snapped[1:], strict=True):
        leg = graph.shortest_path(a, b)
        nodes.extend(leg if not nodes else leg[1:])
    if len(nodes) < 2:
        raise RoutePlanningError("the key points of the route all snap to one point of the road")
    return graph.route_from_nodes(nodes, spacing)


def cut_route(route: Route, length_m: float) -> Route:
    """The first ``length_m`` metres of ``route`` (the end interpolated)."""
    if route.length <= length_m:
        return route
    last = int(np.searchsorted(route.s, length_m))
    fraction = (length_m - route.s[last - 1]) / (route.s[last] - route.s[last - 1])
    end = route.points[last - 1] + fraction * (route.points[last] - route.points[last - 1])
    end_z = route.z[last - 1] + fraction * (route.z[last] - route.z[last - 1])
    points = np.vstack([route.points[:last], end])
    z = np.append(route.z[:last], end_z)
    s = np.append(route.s[:last], length_m)
    return Route(points, z, s, polyline_yaw(points), list(route.lanes))
