"""Town generators: the procedural towns the simulator trains on, and small hand-built towns for tests.

Every generator returns a compiled :class:`~envs.sim.town.Town` and is a pure function of its arguments.

How a town is laid out (world x east, y north, yaw counter-clockwise, metres; traffic keeps right):

* Nodes are the junction centres of a jittered grid; a road runs along each kept grid edge. Each road
  end is *trimmed* (:func:`_end_trim`): it starts just beyond the edges of the node's other roads,
  leaving room for the connector lanes, and the road's centre line bulges sideways by a raised cosine in
  between, so it leaves and enters every node straight along the chord between the two nodes.
* A road has ``n`` lanes per direction. Lane ``i`` of a direction lies ``(i + 0.5) * lane_width`` to the
  right of the road centre line (``i = 0`` next to the centre line) and is listed in driving direction;
  both directions share the road id.
* A node of degree 2 is a *bend*: each lane end is joined to the matching lane of the other road by a
  connector (``in_junction=False``, no light) that is a short road of its own, with its own road id shared
  by both directions, so the route planner (which never re-enters a road) can drive through several bends.
  Roads joined at bends form one *street* and have the same lane count, so bend lanes map ``i -> i``.
* A node of degree 3 or 4 is a *junction*: connectors (``in_junction=True``, road -1) go straight, turn
  right from the rightmost lane and left from lane 0; every approach has its own traffic light and its own
  phase of the junction's cycle (one approach green at a time, :func:`_phases`); the
  junction surface is the convex hull of its road ends. A turning connector is a straight run plus a
  circular arc (the widest that fits between the entry and exit tangent lines, drawn as a cubic Bezier);
  a straight one is a cubic Bezier with handles a third of the chord (:func:`_connector`).
* A node of degree 1 (only in hand-built towns) is a dead end: the road runs to the node and stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from envs.sim.town import LaneSpec, LightSpec, Town, build_town

JUNCTION_CLEARANCE_M = 5.0
"""A road starts this far beyond where its edge meets the edge of a neighbouring road at the node. A
right turn from the rightmost lane into the rightmost lane of a perpendicular road then has a radius of
JUNCTION_CLEARANCE_M + lane_width / 2 (6.75 m with 3.5 m lanes), which a car-sized bicycle model can
follow (minimum radius about 4-5 m)."""

MIN_JUNCTION_TRIM_M = 8.0
"""Smallest distance from a junction centre to where its roads start."""

MIN_BEND_TRIM_M = 15.0
"""Smallest distance from a bend's node to where its roads start: bends are gentler than junction turns."""

_NEIGHBOUR_ANGLE = math.radians(150.0)  # roads meeting at a wider angle than this do not constrain the trim

MIN_ROAD_RADIUS_M = 30.0
"""A road's bulge is capped so its centre line never curves tighter than this radius."""

MIN_ROAD_LENGTH_M = 10.0
"""Shortest road left between two nodes once both ends are trimmed; :class:`TownConfig` rejects grids
that could go below it."""

_CENTRE_LINE_SPACING_M = 1.0  # generator sampling; build_town resamples at POINT_SPACING_M anyway
_CONNECTOR_SPACING_M = 0.5  # connectors are tighter curves, sample them finer


def _end_trim(degree: int, half_width: float, others: list[tuple[float, float]]) -> float:
    """Distance from a node to where one of its roads (``half_width``) starts: 0 at a dead end; otherwise
    JUNCTION_CLEARANCE_M beyond the point where its edge meets the facing edge of each other road, given as
    (half-width, angle in radians between the two roads' outward directions), and at least the floor.

    Two roads at angle a with half-widths h (this one) and g (the other) have edges meeting at
    (g + h cos a) / sin a along this road (g at a right angle).
    """
    if degree <= 1:
        return 0.0
    floor = MIN_BEND_TRIM_M if degree == 2 else MIN_JUNCTION_TRIM_M
    edges_meet = [(other + half_width * math.cos(angle)) / math.sin(angle)
                  for other, angle in others if angle < _NEIGHBOUR_ANGLE]
    return max([floor, *(meet + JUNCTION_CLEARANCE_M for meet in edges_meet)])


@dataclass(frozen=True)
class TownConfig:
    """Parameters of :func:`generate_town`. Lengths in metres.

    The defaults give a town of about 200 m x 200 m: a 3 x 3 grid of nodes, so the four corners are bends
    and the rest are 3- and 4-way junctions, with roads of one or two lanes per direction.
    """

    grid_size: int = 3
    """Nodes per side: the junction grid is grid_size x grid_size (at least 2)."""
    block_length_m: tuple[float, float] = (70.0, 110.0)
    """(min, max) distance between neighbouring grid nodes, sampled once per grid row and per column."""
    jitter_m: float = 8.0
    """Each node moves by up to this much along x and along y from its grid position."""
    curve_offset_m: float = 10.0
    """Largest sideways bulge of a road's centre line at its middle (capped by MIN_ROAD_RADIUS_M)."""
    lanes_per_direction: tuple[int, ...] = (1, 2)
    """Lane counts a street (roads joined through bends) draws from, uniformly."""
    lane_width_m: float = 3.5
    """Width of every lane."""
    edge_drop_prob: float = 0.25
    """Chance that each grid edge is removed (making T-junctions and bends). An edge is only removed when
    both of its nodes keep degree >= 2 and the network stays connected, so on a 3 x 3 grid (where only the
    four spokes of the centre node can go, and at most two of them) fewer go than this fraction."""
    num_routes: int = 64
    """Routes planned on the town (random walks over the lane graph seeded by the town seed)."""
    route_length_m: float = 300.0
    """Length of every planned route."""
    kerb_width_m: float = 2.5
    """Kerb/pavement band beside the drivable surface that counts as clearance, not as off-road."""
    raster_resolution_m: float = 0.5
    """Side of one raster cell."""

    def __post_init__(self) -> None:
        if self.grid_size < 2:
            raise ValueError(f"grid_size={self.grid_size}: a town needs at least a 2 x 2 grid of nodes; "
                             "use grid_size >= 2 (3 or more gives junctions)")
        low, high = self.block_length_m
        if not 0 < low <= high:
            raise ValueError(f"block_length_m={self.block_length_m} must be (min, max) with 0 < min <= max")
        if self.lane_width_m <= 0:
            raise ValueError(f"lane_width_m={self.lane_width_m} must be positive (3.5 is a usual lane)")
        if not self.lanes_per_direction or min(self.lanes_per_direction) < 1:
            raise ValueError(f"lanes_per_direction={self.lanes_per_direction} must be a non-empty tuple of "
                             "lane counts >= 1, e.g. (1, 2)")
        if self.jitter_m < 0 or self.jitter_m > 0.125 * low:
            raise ValueError(f"jitter_m={self.jitter_m} must be in [0, block_length_m[0] / 8 = {low / 8}] so "
                             "roads meet at junctions within 45 degrees of the grid directions")
        if self.curve_offset_m < 0:
            raise ValueError(f"curve_offset_m={self.curve_offset_m} must be >= 0 (0 gives straight roads)")
        if not 0 <= self.edge_drop_prob < 1:
            raise ValueError(f"edge_drop_prob={self.edge_drop_prob} must be in [0, 1)")
        if self.num_routes < 1:
            raise ValueError(f"num_routes={self.num_routes} must be >= 1")
        if self.route_length_m <= 0:
            raise ValueError(f"route_length_m={self.route_length_m} must be positive")
        if self.kerb_width_m < 0:
            raise ValueError(f"kerb_width_m={self.kerb_width_m} must be >= 0")
        if self.raster_resolution_m <= 0:
            raise ValueError(f"raster_resolution_m={self.raster_resolution_m} must be positive")
        # Worst case: each road of a corner tilted towards the other by the largest jitter.
        tilt = math.atan2(2 * self.jitter_m, low - 2 * self.jitter_m)
        half_width = max(self.lanes_per_direction) * self.lane_width_m
        trim = _end_trim(4, half_width, [(half_width, math.pi / 2 - 2 * tilt)])
        trim = max(trim, _end_trim(2, half_width, []))
        shortest = low - 2 * self.jitter_m - 2 * trim
        if shortest < MIN_ROAD_LENGTH_M:
            raise ValueError(f"block_length_m[0]={low} can leave roads as short as {shortest:.1f} m once "
                             f"{trim:.1f} m are trimmed at each end for junctions; raise block_length_m[0] to "
                             f"at least {MIN_ROAD_LENGTH_M + 2 * self.jitter_m + 2 * trim:.1f}, or use fewer "
                             "or narrower lanes or less jitter")


DEFAULT_TOWN_CONFIG = TownConfig()


def generate_town(seed: int, config: TownConfig = DEFAULT_TOWN_CONFIG) -> Town:
    """A procedural town, a pure function of ``(seed, config)``; see the module docstring for the layout.

    Layout randomness comes from ``numpy.random.default_rng(seed)``; build_town plans the routes from the
    same seed.

    Raises ValueError (from :func:`~envs.sim.town.build_town`) when the town admits no route of
    ``config.route_length_m``.
    """
    rng = np.random.default_rng(seed)
    size = config.grid_size
    low, high = config.block_length_m

    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(low, high, size - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(low, high, size - 1))])
    # Node row * size + col sits at (xs[col], ys[row]); the town is centred on the origin.
    grid = np.stack(np.meshgrid(xs - xs.mean(), ys - ys.mean()), axis=-1).reshape(-1, 2)
    nodes = grid + rng.uniform(-config.jitter_m, config.jitter_m, grid.shape)

    edges = [(r * size + c, r * size + c + 1) for r in range(size) for c in range(size - 1)]
    edges += [(r * size + c, (r + 1) * size + c) for r in range(size - 1) for c in range(size)]
    edges = _drop_edges(rng, len(nodes), edges, config.edge_drop_prob)

    # One lane count per street, so a bend joins roads of equal width.
    degree = np.bincount(np.array(edges).reshape(-1), minlength=len(nodes))
    street = list(range(len(edges)))
    for node in np.flatnonzero(degree == 2):
        first, second = (k for k, edge in enumerate(edges) if node in edge)
        street[_find(street, first)] = _find(street, second)
    street_lanes: dict[int, int] = {}
    choices = config.lanes_per_direction
    for k in range(len(edges)):
        root = _find(street, k)
        if root not in street_lanes:
            street_lanes[root] = int(choices[rng.integers(len(choices))])
    lanes_per_road = [street_lanes[_find(street, k)] for k in range(len(edges))]

    roads = [_Road(a, b, lanes, 0.0) for (a, b), lanes in zip(edges, lanes_per_road, strict=True)]
    trims = _trims(nodes, roads, config.lane_width_m)
    for k, road in enumerate(roads):
        length = np.linalg.norm(nodes[road.node_b] - nodes[road.node_a]) - trims[k, 0] - trims[k, 1]
        # Raised-cosine bulge b(1 - cos 2 pi t)/2 has peak curvature 2 pi^2 b / length^2.
        cap = length**2 / (2 * math.pi**2 * MIN_ROAD_RADIUS_M)
        roads[k] = replace(road, bulge=float(rng.uniform(-1.0, 1.0)) * min(config.curve_offset_m, cap))

    network = _build_network(nodes, roads, config.lane_width_m)
    return build_town(seed, network.lanes, network.lights, num_routes=config.num_routes,
                      route_length_m=config.route_length_m, kerb_width_m=config.kerb_width_m,
                      raster_resolution=config.raster_resolution_m,
                      junction_polygons=network.junction_polygons)


@dataclass(frozen=True)
class CrossJunctionIds:
    """Lane and light ids of :func:`cross_junction_town`, keyed by the direction of travel.

    ``approach["eastbound"]`` are the lanes driving east towards the junction (on the west arm),
    ``exit["eastbound"]`` the lanes driving east away from it (on the east arm), each listed from the
    centre line outwards (lane index ``i``); ``light["eastbound"]`` governs the eastbound approach.
    Directions: "eastbound", "northbound", "westbound", "southbound".
    """

    approach: dict[str, tuple[int, ...]]
    exit: dict[str, tuple[int, ...]]
    light: dict[str, int]


_APPROACH_DIRECTION = ("westbound", "southbound", "eastbound", "northbound")  # driving in from arm k
_EXIT_DIRECTION = ("eastbound", "northbound", "westbound", "southbound")  # driving out along arm k


def cross_junction_ids(lanes_per_direction: int = 1) -> CrossJunctionIds:
    """Which lanes and lights of :func:`cross_junction_town` are which.

    Road k is arm k of (east, north, west, south). Its lanes ``2nk .. 2nk+n-1`` drive from the outer end
    towards the junction, lanes ``2nk+n .. 2nk+2n-1`` away from it; the junction connectors follow
    (ids >= 8n). Light k governs the approach from arm k and is green in phase k (one approach at a time).
    """
    n = lanes_per_direction
    return CrossJunctionIds(
        approach={_APPROACH_DIRECTION[k]: tuple(range(2 * n * k, 2 * n * k + n)) for k in range(4)},
        exit={_EXIT_DIRECTION[k]: tuple(range(2 * n * k + n, 2 * n * k + 2 * n)) for k in range(4)},
        light={_APPROACH_DIRECTION[k]: k for k in range(4)},
    )


def cross_junction_town(arm_length_m: float = 120.0, lanes_per_direction: int = 1, seed: int = 0,
                        num_routes: int = 8, route_length_m: float = 150.0) -> Town:
    """One 4-way junction at the origin with four straight arms of ``arm_length_m``, for light tests.

    Lanes are 3.5 m wide; lane and light ids are given by :func:`cross_junction_ids`. The arms' outer
    lane ends have no successors; routes run in along one arm, through the junction and out along
    another.
    """
    if lanes_per_direction < 1:
        raise ValueError(f"lanes_per_direction={lanes_per_direction} must be >= 1")
    half_width = lanes_per_direction * 3.5
    trim = _end_trim(4, half_width, [(half_width, math.pi / 2)])
    if arm_length_m - trim < MIN_ROAD_LENGTH_M:
        raise ValueError(f"arm_length_m={arm_length_m} must be at least {trim + MIN_ROAD_LENGTH_M:.1f} m "
                         "(the junction's trim plus the shortest road)")
    centre = np.zeros(2)
    ends = [arm_length_m * np.array([math.cos(k * math.pi / 2), math.sin(k * math.pi / 2)]) for k in range(4)]
    nodes = np.stack([*ends, centre]).round(9)  # round: cos(pi/2) is 6e-17, not 0
    roads = [_Road(k, 4, lanes_per_direction, 0.0) for k in range(4)]  # a = outer end, b = junction
    network = _build_network(nodes, roads, 3.5)
    return build_town(seed, network.lanes, network.lights, num_routes=num_routes,
                      route_length_m=route_length_m, junction_polygons=network.junction_polygons)


def straight_town(length_m: float = 600.0, lanes_per_direction: int = 1, lane_width: float = 3.5,
                  num_routes: int = 4, route_length_m: float = 250.0, seed: int = 0) -> Town:
    """One straight two-way road along +x from x=0 to ``length_m``, for physics and off-road tests.

    Lanes 0..n-1 drive east (lane 0 next to the centre line), lanes n..2n-1 drive west; no junctions.
    Routes start in the first half of a lane, so ``route_length_m`` must be at most half the road.
    """
    if route_length_m > length_m / 2:
        raise ValueError(f"route_length_m={route_length_m} must be at most half of length_m={length_m}")
    n = lanes_per_direction
    specs = []
    for direction in (1.0, -1.0):
        base = 0 if direction > 0 else n
        for i in range(n):
            y = -direction * (i + 0.5) * lane_width  # keep right: eastbound lanes lie south (y < 0)
            xs = [0.0, length_m] if direction > 0 else [length_m, 0.0]
            specs.append(LaneSpec(points=np.array([[xs[0], y], [xs[1], y]]), width=lane_width, road=0,
                                  left_neighbour=base + i - 1 if i > 0 else -1,
                                  right_neighbour=base + i + 1 if i + 1 < n else -1))
    return build_town(seed, specs, [], num_routes=num_routes, route_length_m=route_length_m)


# --------------------------------------------------------------------------------------------------------
# Network construction shared by the generators: nodes + roads -> lanes, lights, junction polygons.


@dataclass(frozen=True)
class _Road:
    node_a: int
    node_b: int
    lanes: int  # per direction
    bulge: float  # metres, the centre line's sideways offset at mid-road, + to the left of a -> b


@dataclass
class _LaneDraft:
    points: np.ndarray
    road: int
    in_junction: bool = False
    light: int = -1
    left: int = -1
    right: int = -1
    successors: list[int] = field(default_factory=list)


@dataclass
class _RoadEnd:
    """One road as seen from one of its nodes."""

    road: int
    outward: np.ndarray  # unit vector from the node along the road
    centre: np.ndarray  # where the road's trimmed centre line ends at this node
    half_width: float
    incoming: list[int]  # lanes ending here, lane index i = 0 next to the centre line
    outgoing: list[int]  # lanes starting here


@dataclass(frozen=True)
class _Network:
    lanes: list[LaneSpec]
    lights: list[LightSpec]
    junction_polygons: list[np.ndarray]


def _trims(nodes: np.ndarray, roads: list[_Road], lane_width: float) -> np.ndarray:
    """[num_roads, 2] trim of each road at its node_a and at its node_b (see :func:`_end_trim`)."""
    incident: list[list[tuple[int, np.ndarray]]] = [[] for _ in nodes]  # (road id, outward unit vector)
    for k, road in enumerate(roads):
        chord = nodes[road.node_b] - nodes[road.node_a]
        unit = chord / np.linalg.norm(chord)
        incident[road.node_a].append((k, unit))
        incident[road.node_b].append((k, -unit))
    trims = np.zeros((len(roads), 2))
    for node, ends in enumerate(incident):
        for k, outward in ends:
            others = [(roads[j].lanes * lane_width, math.acos(float(np.clip(outward @ other, -1.0, 1.0))))
                      for j, other in ends if j != k]
            trim = _end_trim(len(ends), roads[k].lanes * lane_width, others)
            trims[k, 0 if roads[k].node_a == node else 1] = trim
    return trims


def _find(parent: list[int], k: int) -> int:
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


def _drop_edges(rng: np.random.Generator, num_nodes: int, edges: list[tuple[int, int]],
                drop_prob: float) -> list[tuple[int, int]]:
    """Remove each edge with probability ``drop_prob``, visiting them in random order and keeping any whose
    removal would leave a node of degree < 2 or disconnect the network."""
    kept = list(edges)
    for edge in [edges[k] for k in rng.permutation(len(edges))]:
        if rng.random() >= drop_prob:
            continue
        trial = [e for e in kept if e != edge]
        degree = np.bincount(np.array(trial).reshape(-1), minlength=num_nodes)
        if degree.min() >= 2 and _connected(num_nodes, trial):
            kept = trial
    return kept


def _connected(num_nodes: int, edges: list[tuple[int, int]]) -> bool:
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    seen, stack = {0}, [0]
    while stack:
        for nxt in neighbours[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen) == num_nodes


def _left_normal(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.stack([-unit[..., 1], unit[..., 0]], axis=-1)


def _bezier(start: np.ndarray, start_reach: float, start_heading: np.ndarray, end: np.ndarray,
            end_reach: float, end_heading: np.ndarray) -> np.ndarray:
    """Cubic Bezier from ``start`` leaving along ``start_heading`` to ``end`` arriving along ``end_heading``
    (unit vectors), with handles of the given lengths, sampled every ~_CONNECTOR_SPACING_M."""
    controls = np.stack([start, start + start_reach * start_heading, end - end_reach * end_heading, end])
    count = max(8, int(math.ceil(1.3 * np.linalg.norm(end - start) / _CONNECTOR_SPACING_M)) + 1)
    t = np.linspace(0.0, 1.0, count)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    points = basis @ controls
    points[0], points[-1] = start, end  # exact, so successor lanes join without a gap
    return points


def _connector(start: np.ndarray, start_heading: np.ndarray, end: np.ndarray,
               end_heading: np.ndarray) -> np.ndarray:
    """Centre line of a connector from ``start`` leaving along ``start_heading`` to ``end`` arriving along
    ``end_heading`` (unit vectors); heading is continuous at both ends.

    A turn of more than 30 degrees runs straight towards the corner where the two tangent lines cross until
    it is as far from the corner as the other end is, then follows a circular arc (a cubic Bezier with arc
    handles) to the other tangent line: the widest radius that fits, where one cubic over the whole turn
    would pile its curvature at the end nearer the corner. A gentler connector (straight on, or a lane
    shift, whose tangent lines do not cross ahead) is one cubic Bezier with handles a third of the chord
    long: spread over its whole length it bends less than a short arc at one end would.
    """
    cross = start_heading[0] * end_heading[1] - start_heading[1] * end_heading[0]
    turn = abs(math.atan2(cross, float(start_heading @ end_heading)))
    if math.radians(30.0) < turn < math.radians(170.0):
        # start + to_corner * start_heading == end - from_corner * end_heading
        to_corner, from_corner = np.linalg.solve(np.stack([start_heading, end_heading], axis=1), end - start)
        if to_corner > 0 and from_corner > 0:
            corner = start + to_corner * start_heading
            tangent = min(to_corner, from_corner)
            reach = 4 / 3 * math.tan(turn / 4) / math.tan(turn / 2) * tangent
            arc_start, arc_end = corner - tangent * start_heading, corner + tangent * end_heading
            arc = _bezier(arc_start, reach, start_heading, arc_end, reach, end_heading)
            lead_in = _straight(start, arc_start)
            lead_out = _straight(arc_end, end)
            return np.concatenate([lead_in[:-1], arc, lead_out[1:]])
    reach = float(np.linalg.norm(end - start)) / 3
    return _bezier(start, reach, start_heading, end, reach, end_heading)


def _straight(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    count = max(2, int(math.ceil(np.linalg.norm(end - start) / _CONNECTOR_SPACING_M)) + 1)
    return start + np.linspace(0.0, 1.0, count)[:, None] * (end - start)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of ``points`` [n, 2] (Andrew's monotone chain)."""
    ordered = sorted({(float(x), float(y)) for x, y in points})

    def half(chain_points):
        chain: list[tuple[float, float]] = []
        for p in chain_points:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(ordered), half(ordered[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _build_network(nodes: np.ndarray, roads: list[_Road], lane_width: float) -> _Network:
    """Lanes, connectors, lights and junction polygons of a road network.

    Lane ids: road k's lanes from node_a to node_b come first (lane index i = 0..n-1), then its lanes from
    node_b to node_a, for k = 0, 1, ...; then the bend and junction connectors, node by node.
    """
    edges = [(road.node_a, road.node_b) for road in roads]
    degree = np.bincount(np.array(edges).reshape(-1), minlength=len(nodes))
    trims = _trims(nodes, roads, lane_width)
    drafts: list[_LaneDraft] = []
    ends: list[list[_RoadEnd]] = [[] for _ in nodes]

    for road_id, road in enumerate(roads):
        chord = nodes[road.node_b] - nodes[road.node_a]
        unit = chord / np.linalg.norm(chord)
        start = nodes[road.node_a] + trims[road_id, 0] * unit
        end = nodes[road.node_b] - trims[road_id, 1] * unit
        length = float(np.linalg.norm(end - start))
        if length < MIN_ROAD_LENGTH_M:
            raise ValueError(f"road {road_id} is only {length:.1f} m long once trimmed for its nodes; "
                             "spread the nodes further apart")
        t = np.linspace(0.0, 1.0, max(2, int(math.ceil(length / _CENTRE_LINE_SPACING_M)) + 1))[:, None]
        side = _left_normal(unit)
        centre = start + t * (end - start) + road.bulge * (1 - np.cos(2 * math.pi * t)) / 2 * side
        tangent = (end - start) + road.bulge * math.pi * np.sin(2 * math.pi * t) * side
        left = _left_normal(tangent)
        n, base = road.lanes, len(drafts)
        forward = [base + i for i in range(n)]
        backward = [base + n + i for i in range(n)]
        for ids, sign in ((forward, -1.0), (backward, 1.0)):  # forward lanes lie right of a -> b
            for i in range(n):
                points = centre + sign * (i + 0.5) * lane_width * left
                drafts.append(_LaneDraft(points=points if sign < 0 else points[::-1].copy(), road=road_id,
                                         left=ids[i - 1] if i > 0 else -1,
                                         right=ids[i + 1] if i + 1 < n else -1))
        half_width = n * lane_width
        ends[road.node_a].append(_RoadEnd(road_id, unit, start, half_width, backward, forward))
        ends[road.node_b].append(_RoadEnd(road_id, -unit, end, half_width, forward, backward))

    lights: list[LightSpec] = []
    polygons: list[np.ndarray] = []
    next_road = len(roads)
    for node in range(len(nodes)):
        if degree[node] == 2:
            _connect_bend(drafts, ends[node], next_road)
            next_road += 1
        elif degree[node] >= 3:
            _connect_junction(drafts, lights, ends[node], junction=len(polygons))
            corners = [end.centre + sign * end.half_width * _left_normal(end.outward)
                       for end in ends[node] for sign in (1.0, -1.0)]
            polygons.append(_convex_hull(np.stack(corners)))

    lanes = [LaneSpec(points=d.points, width=lane_width, successors=tuple(d.successors),
                      in_junction=d.in_junction, light=d.light, road=d.road,
                      left_neighbour=d.left, right_neighbour=d.right) for d in drafts]
    return _Network(lanes, lights, polygons)


def _add_connector(drafts: list[_LaneDraft], source: int, target: int, *, road: int, in_junction: bool,
                   light: int) -> int:
    start, end = drafts[source].points, drafts[target].points
    start_heading = (start[-1] - start[-2]) / np.linalg.norm(start[-1] - start[-2])
    end_heading = (end[1] - end[0]) / np.linalg.norm(end[1] - end[0])
    points = _connector(start[-1], start_heading, end[0], end_heading)
    drafts.append(_LaneDraft(points=points, road=road, in_junction=in_junction, light=light,
                             successors=[target]))
    drafts[source].successors.append(len(drafts) - 1)
    return len(drafts) - 1


def _connect_bend(drafts: list[_LaneDraft], ends: list[_RoadEnd], road: int) -> None:
    """Join the two roads of a bend lane by lane; the connectors form one short road with id ``road``."""
    for entry, exit_ in ((ends[0], ends[1]), (ends[1], ends[0])):
        if len(entry.incoming) != len(exit_.outgoing):
            raise ValueError("roads meeting at a bend must have the same number of lanes")
        ids = [_add_connector(drafts, source, target, road=road, in_junction=False, light=-1)
               for source, target in zip(entry.incoming, exit_.outgoing, strict=True)]
        for i, lane_id in enumerate(ids):
            drafts[lane_id].left = ids[i - 1] if i > 0 else -1
            drafts[lane_id].right = ids[i + 1] if i + 1 < len(ids) else -1


def _turn_angle(entry: _RoadEnd, exit_: _RoadEnd) -> float:
    """Signed turn from driving in along ``entry`` to driving out along ``exit_``: + left, - right."""
    heading_in, heading_out = -entry.outward, exit_.outward
    cross = heading_in[0] * heading_out[1] - heading_in[1] * heading_out[0]
    return math.atan2(cross, float(heading_in @ heading_out))


def _phases(ends: list[_RoadEnd]) -> list[int]:
    """Light phase per approach: every approach has a phase of its own, numbered counter-clockwise from the
    most nearly eastward road, so the junction's cycle gives green to one approach at a time (as CARLA's
    traffic-light groups do). No two green movements then cross or merge, and turning traffic needs no
    gap acceptance."""
    if len(ends) not in (3, 4):
        raise ValueError(f"junctions of degree {len(ends)} are not supported (3 or 4 roads)")
    angles = np.array([math.atan2(end.outward[1], end.outward[0]) % (2 * math.pi) for end in ends])
    angles = np.where(angles > 2 * math.pi - math.pi / 4, angles - 2 * math.pi, angles)  # east first
    return np.argsort(np.argsort(angles)).tolist()


def _connect_junction(drafts: list[_LaneDraft], lights: list[LightSpec], ends: list[_RoadEnd],
                      junction: int) -> None:
    """Connectors from every approach to every other road (no U-turns), one light per approach."""
    for entry, phase in zip(ends, _phases(ends), strict=True):
        light = len(lights)
        stop = np.mean([drafts[lane].points[-1] for lane in entry.incoming], axis=0)
        lights.append(LightSpec(junction=junction, phase=phase, stop_point=(float(stop[0]), float(stop[1]))))
        n_in = len(entry.incoming)
        turns: dict[str, _RoadEnd] = {}
        for exit_ in ends:
            if exit_ is entry:
                continue
            angle = _turn_angle(entry, exit_)
            turns["straight" if abs(angle) < math.pi / 4 else "left" if angle > 0 else "right"] = exit_
        pairs: set[tuple[int, int]] = set()  # (incoming lane index, outgoing lane id)
        if "straight" in turns:
            out = turns["straight"].outgoing
            pairs |= {(min(k, n_in - 1), out[min(k, len(out) - 1)]) for k in range(max(n_in, len(out)))}
        if "right" in turns:
            pairs.add((n_in - 1, turns["right"].outgoing[-1]))
        if "left" in turns:
            pairs.add((0, turns["left"].outgoing[0]))
        # Middle lanes of a wide stem with no straight exit: the left half turns left, the right half right.
        for i in range(n_in):
            if any(source == i for source, _ in pairs):
                continue
            side = "left" if i < n_in / 2 and "left" in turns else "right" if "right" in turns else "left"
            out = turns[side].outgoing
            pairs.add((i, out[min(i, len(out) - 1)] if side == "left"
                       else out[max(len(out) - (n_in - i), 0)]))
        for i, target in sorted(pairs):
            _add_connector(drafts, entry.incoming[i], target, road=-1, in_junction=True, light=light)
