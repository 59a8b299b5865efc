"""Traffic lights on CARLA: their stop lines, and a schedule this backend drives them by.

**Stop lines.** A CARLA traffic light has a trigger volume (a box near its pole, in the light's frame). As the
leaderboard's red-light test does, :func:`stop_lines_for_light` samples the box along its length, projects the
samples onto driving lanes, follows each lane to the junction entrance and puts a stop line across the lane
there. A red-light infraction is the ego's front bumper crossing a stop line, moving along the lane, while
its light is red (:func:`red_light_crossed`); the same rule as the built-in simulator's.

**Schedule (``env.light_control=backend``, the default).** CARLA's light groups keep their phase in the server
(which pole is green, for how long already); the Python API can read a light's elapsed time but not set it,
and the traffic manager's ``set_random_device_seed`` even resets every group. So by default the backend
freezes the server's lights and sets their states itself from :func:`scheduled_states`, a pure function of
the episode time and a per-episode offset that live in the world state. A snapshot then restores the lights
exactly, and every branch of a group sees the same lights. The cycle imitates CARLA's: within a junction's
group the lights take turns, each green for its green time, yellow for its yellow time, then all red for its
red time (clearance), then the next light. Each light gets its own turn (ordered by pole index, then position),
so approaches that CARLA would turn green together wait for each other, and conflicting greens never happen.
Junction groups start at offsets drawn from the episode, so neighbouring junctions are out of step.

States use CARLA's numbering (:data:`RED` = ``carla.TrafficLightState.Red`` = 0, ...); :func:`to_sim_state`
maps them to the built-in simulator's constants, which the observation uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RED, YELLOW, GREEN, OFF, UNKNOWN = 0, 1, 2, 3, 4
"""``carla.TrafficLightState`` values."""

GOLDEN = 0.6180339887498949  # group g of an episode starts at frac(offset + g * GOLDEN) of its cycle
STOP_LINE_HALF_WIDTH = 0.45  # stop lines span this fraction of the lane width on each side of its centre


def to_sim_state(state: np.ndarray) -> np.ndarray:
    """CARLA light states -> envs.driving.lights (GREEN 0, YELLOW 1, RED 2); Off and Unknown -> -1 (no light)."""
    from envs.driving.lights import GREEN as SIM_GREEN
    from envs.driving.lights import RED as SIM_RED
    from envs.driving.lights import YELLOW as SIM_YELLOW

    table = np.array([SIM_RED, SIM_YELLOW, SIM_GREEN, -1, -1], dtype=np.int64)
    return table[np.clip(np.asarray(state, dtype=np.int64), 0, 4)]


# --- the schedule -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LightSchedule:
    """Which lights take turns (``groups``: lists of light indices, in turn order) and each light's green,
    yellow and red (clearance) seconds ``times`` [L, 3]."""

    groups: tuple[tuple[int, ...], ...]
    times: np.ndarray

    @property
    def num_lights(self) -> int:
        return len(self.times)

    def cycle_s(self, group: int) -> float:
        return float(self.times[list(self.groups[group])].sum())


def scheduled_states(schedule: LightSchedule, time_s: float, offset: float) -> np.ndarray:
    """CARLA states [L] of every light at ``time_s`` seconds into an episode whose light offset is ``offset``
    (in [0, 1)). Lights in no group stay green."""
    states = np.full(schedule.num_lights, GREEN, dtype=np.int64)
    for number, group in enumerate(schedule.groups):
        if not group:
            continue
        times = schedule.times[list(group)]
        turns = times.sum(axis=1)
        cycle = float(turns.sum())
        if cycle <= 0:
            continue
        start = math.modf(offset + number * GOLDEN)[0] * cycle
        within = math.fmod(time_s + start, cycle)
        ends = np.cumsum(turns)
        turn = min(int(np.searchsorted(ends, within, side="right")), len(group) - 1)
        into_turn = within - (ends[turn] - turns[turn])
        for position, light in enumerate(group):
            if position != turn:
                states[light] = RED
            elif into_turn < times[turn, 0]:
                states[light] = GREEN
            elif into_turn < times[turn, 0] + times[turn, 1]:
                states[light] = YELLOW
            else:
                states[light] = RED
    return states


def light_key(x: float, y: float) -> tuple[float, float]:
    """A light's key: its position rounded to 0.1 m (the same on every server running the map; actor ids
    are not)."""
    return round(float(x), 1), round(float(y), 1)


def schedule_from_lights(lights) -> LightSchedule:
    """The schedule for ``lights`` (``carla.TrafficLight`` actors, in the backend's order): groups from
    ``get_group_traffic_lights()``, turns ordered by pole index then position, times from the lights."""
    index = {light_key(light.get_location().x, light.get_location().y): number for number, light in enumerate(lights)}
    seen: set[int] = set()
    groups = []
    for number, light in enumerate(lights):
        if number in seen:
            continue
        members = [index.get(light_key(m.get_location().x, m.get_location().y))
                   for m in light.get_group_traffic_lights()]
        members = sorted({m for m in members if m is not None} | {number},
                         key=lambda m: (lights[m].get_pole_index(), light_key(lights[m].get_location().x,
                                                                              lights[m].get_location().y)))
        seen.update(members)
        groups.append(tuple(members))
    times = np.array([[light.get_green_time(), light.get_yellow_time(), light.get_red_time()] for light in lights],
                     dtype=np.float64).reshape(-1, 3)
    return LightSchedule(tuple(groups), times)


# --- stop lines ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StopLines:
    """Stop lines in CARLA coordinates: endpoints ``a`` and ``b`` [S, 2], the lane's driving direction
    ``direction`` [S, 2] (unit), and the index of the light that controls each ``light`` [S]."""

    a: np.ndarray
    b: np.ndarray
    direction: np.ndarray
    light: np.ndarray

    @classmethod
    def empty(cls) -> StopLines:
        return cls(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, dtype=np.int64))

    @classmethod
    def concat(cls, parts: list[StopLines]) -> StopLines:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("a", "b", "direction", "light")))

    def __len__(self) -> int:
        return len(self.light)


def rotate(x: float, y: float, yaw_deg: float) -> tuple[float, float]:
    """(x, y) rotated by a CARLA yaw (degrees): the light frame's axes expressed in the world."""
    angle = math.radians(yaw_deg)
    return x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)


def stop_lines_for_light(carla_map, light_transform, trigger_volume, light_index: int = 0,
                         sample_step_m: float = 1.0, max_advance_m: float = 100.0) -> StopLines:
    """Stop lines of one light: its trigger volume (``carla.BoundingBox`` in the light's frame) placed by the
    light's ``carla.Transform``, sampled along its x extent, projected onto driving lanes, and each lane
    followed to the junction entrance, where the line crosses the lane."""
    import carla

    local = trigger_volume.location
    centre = light_transform.transform(carla.Location(x=local.x, y=local.y, z=local.z))  # transforms in place
    extent = trigger_volume.extent
    yaw = light_transform.rotation.yaw
    waypoints = []
    for along in np.arange(-0.9 * extent.x, 0.9 * extent.x + 1e-9, sample_step_m):
        dx, dy = rotate(float(along), 0.0, yaw)
        point = carla.Location(x=centre.x + dx, y=centre.y + dy, z=centre.z)
        waypoint = carla_map.get_waypoint(point, project_to_road=True, lane_type=carla.LaneType.Driving)
        if waypoint is None:
            continue
        if any((w.road_id, w.lane_id) == (waypoint.road_id, waypoint.lane_id) for w in waypoints):
            continue
        waypoints.append(waypoint)
    a, b, direction = [], [], []
    for waypoint in waypoints:
        for _ in range(int(max_advance_m / 0.5)):  # follow the lane to the junction entrance
            if waypoint.is_junction:
                break
            ahead = waypoint.next(0.5)
            if not ahead or ahead[0].is_junction:
                break
            waypoint = ahead[0]
        location, heading = waypoint.transform.location, waypoint.transform.rotation.yaw
        half = STOP_LINE_HALF_WIDTH * waypoint.lane_width
        left_x, left_y = rotate(half, 0.0, heading - 90.0)
        a.append((location.x + left_x, location.y + left_y))
        b.append((location.x - left_x, location.y - left_y))
        direction.append(rotate(1.0, 0.0, heading))
    if not a:
        return StopLines.empty()
    return StopLines(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                     np.asarray(direction, dtype=np.float64), np.full(len(a), light_index, dtype=np.int64))


# --- crossing tests ------------------------------------------------------------------------------------------------

def segments_cross(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether segment p0 -> p1 ([2]) properly crosses each segment a -> b ([S, 2]); [S] bool."""
    def orientation(u, v, w):
        return (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])

    p0, p1 = np.broadcast_to(p0, a.shape), np.broadcast_to(p1, a.shape)
    d1, d2 = orientation(a, b, p0), orientation(a, b, p1)
    d3, d4 = orientation(p0, p1, a), orientation(p0, p1, b)
    return (d1 * d2 < 0) & (d3 * d4 < 0)


def red_light_crossed(previous_front: np.ndarray, front: np.ndarray, lines: StopLines,
                      light_states: np.ndarray) -> np.ndarray:
    """Stop lines [S] (bool) the front bumper crossed between two steps (``previous_front`` -> ``front``, CARLA
    x, y) while moving along their lane and with their light red."""
    if len(lines) == 0:
        return np.zeros(0, dtype=bool)
    moved = np.asarray(front, dtype=np.float64) - np.asarray(previous_front, dtype=np.float64)
    forward = lines.direction @ moved > 0
    red = np.asarray(light_states)[lines.light] == RED
    return segments_cross(np.asarray(previous_front, dtype=np.float64), np.asarray(front, dtype=np.float64),
                          lines.a, lines.b) & forward & red


def route_stop_lines(route_points: np.ndarray, route_s: np.ndarray, lines: StopLines) -> tuple[np.ndarray, np.ndarray]:
    """Where a route (CARLA points [P, 2], arc lengths [P]) crosses stop lines in their driving direction:
    (arc lengths [C], light indices [C]) sorted along the route."""
    found_s, found_light = [], []
    if len(lines) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    for i in range(len(route_points) - 1):
        p0, p1 = route_points[i], route_points[i + 1]
        crossing = segments_cross(p0, p1, lines.a, lines.b) & (lines.direction @ (p1 - p0) > 0)
        for line in np.flatnonzero(crossing):
            # Where along p0 -> p1 the line is crossed (intersection of the two segments' supporting lines).
            d, e = p1 - p0, lines.b[line] - lines.a[line]
            denominator = d[0] * e[1] - d[1] * e[0]
            t = ((lines.a[line][0] - p0[0]) * e[1] - (lines.a[line][1] - p0[1]) * e[0]) / denominator
            found_s.append(route_s[i] + t * (route_s[i + 1] - route_s[i]))
            found_light.append(int(lines.light[line]))
    order = np.argsort(found_s, kind="stable")
    return np.asarray(found_s, dtype=np.float64)[order], np.asarray(found_light, dtype=np.int64)[order]
