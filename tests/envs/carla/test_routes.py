"""Route planning on a carla.Map built from OpenDRIVE text (no server), and leaderboard route files."""

import numpy as np
import pytest

from envs.carla.routes import (
    RoutePlanningError,
    cut_route,
    densify,
    load_route_file,
    parse_route_xml,
    plan_random_route,
    plan_route,
    town_matches,
)

LEADERBOARD_1 = """<?xml version="1.0" encoding="UTF-8"?>
<routes>
  <route id="0" town="Town01">
    <waypoint pitch="0.0" roll="0.0" x="338.7" y="226.7" yaw="270.0" z="0.0"/>
    <waypoint pitch="0.0" roll="0.0" x="321.9" y="194.8" yaw="180.0" z="0.0"/>
  </route>
  <route id="7" town="Town02">
    <waypoint x="1.0" y="2.0" z="0.5"/>
    <waypoint x="3.0" y="4.0"/>
    <waypoint x="5.0" y="6.0" z="0.0"/>
  </route>
</routes>"""

BENCH2DRIVE = """<?xml version="1.0" encoding="UTF-8"?>
<routes>
   <route id="2278" town="Town12">
      <weathers>
         <weather route_percentage="0" cloudiness="5.0" precipitation="0.0" sun_altitude_angle="90.0"/>
      </weathers>
      <waypoints>
         <position x="-2014.4" y="4768.0" z="362.7"/>
         <position x="-2011.8" y="4828.4" z="364.5"/>
      </waypoints>
      <scenarios>
         <scenario name="Accident_1" type="Accident">
            <trigger_point x="-2014.4" y="4768.0" yaw="90.0" z="362.7"/>
         </scenario>
      </scenarios>
   </route>
</routes>"""


def test_leaderboard_1_format():
    routes = parse_route_xml(LEADERBOARD_1)
    assert [(r.id, r.town, len(r.keypoints)) for r in routes] == [("0", "Town01", 2), ("7", "Town02", 3)]
    assert routes[0].keypoints[0] == (338.7, 226.7, 0.0)
    assert routes[1].keypoints[1] == (3.0, 4.0, 0.0)  # z defaults to 0


def test_bench2drive_format_ignores_weathers_and_scenarios():
    (route,) = parse_route_xml(BENCH2DRIVE)
    assert route.id == "2278" and route.town == "Town12"
    assert route.keypoints == ((-2014.4, 4768.0, 362.7), (-2011.8, 4828.4, 364.5))  # not the trigger point


@pytest.mark.parametrize("text,message", [
    ("<routes>", "not valid XML"),
    ("<routes/>", "no <route>"),
    ('<routes><route id="1"><waypoint x="1" y="2"/></route></routes>', "no town"),
    ('<routes><route id="1" town="T"><waypoint x="1" y="2"/></route></routes>', "at least 2"),
    ('<routes><route id="1" town="T"><waypoint x="a" y="2"/><waypoint x="1" y="2"/></route></routes>', "numeric"),
])
def test_bad_route_files(text, message):
    with pytest.raises(RoutePlanningError, match=message):
        parse_route_xml(text)


def test_route_file_filtered_by_town(tmp_path):
    path = tmp_path / "routes.xml"
    path.write_text(LEADERBOARD_1)
    assert [r.id for r in load_route_file(path, "Town02")] == ["7"]
    assert [r.id for r in load_route_file(path, "Carla/Maps/Town01_Opt")] == ["0"]
    with pytest.raises(RoutePlanningError, match=r"its towns: \['Town01', 'Town02'\]"):
        load_route_file(path, "Town10HD_Opt")
    with pytest.raises(RoutePlanningError, match="does not exist"):
        load_route_file(tmp_path / "missing.xml")


def test_town_names_match_with_and_without_layers():
    assert town_matches("Carla/Maps/Town10HD_Opt", "Town10HD_Opt")
    assert town_matches("Town10HD", "Town10HD_Opt")
    assert not town_matches("Town01", "Town10HD")


def test_densify_and_cut():
    points, z, s = densify(np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 5.5]]), np.zeros(4), 1.0)
    assert s[-1] == pytest.approx(15.5) and np.allclose(np.diff(s)[:-1], 1.0)
    assert np.allclose(points[-1], [10.0, 5.5])
    from envs.carla.routes import Route, polyline_yaw

    route = cut_route(Route(points, z, s, polyline_yaw(points)), 12.25)
    assert route.length == pytest.approx(12.25) and np.allclose(route.points[-1], [10.0, 2.25])


def _on_driving_lane(carla_map, points):
    import carla

    return all(carla_map.get_waypoint(carla.Location(x=float(x), y=float(y)), project_to_road=False,
                                      lane_type=carla.LaneType.Driving) is not None for x, y in points)


def test_lane_graph_covers_every_lane(t_junction_graph):
    # dead-end lanes the 0.9.16 topology leaves out (road 1 lane -2, the far ends of roads 2 and 3) are in
    keys = set(t_junction_graph.segment_keys)
    assert {(1, 0, -2), (1, 0, -1), (1, 0, 1), (1, 0, 2), (2, 0, -1), (3, 0, -1), (10, 0, -1), (11, 0, -1),
            (12, 0, -1)} <= keys
    lane_changes = [(a, b) for a, edges in enumerate(t_junction_graph.successors) for b, _, change in edges if change]
    lanes = {(int(t_junction_graph.lane[a]), int(t_junction_graph.lane[b])) for a, b in lane_changes}
    assert lanes == {(-1, -2), (-2, -1), (1, 2), (2, 1)}  # never across the centre line


@pytest.mark.parametrize("seed", range(6))
def test_random_route_has_the_requested_length_and_follows_lanes(t_junction_map, t_junction_graph, seed):
    route = plan_random_route(t_junction_graph, 150.0, seed, spacing=1.0)
    assert route.length == pytest.approx(150.0)
    steps = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
    assert steps.max() <= 1.0 + 1e-6  # connected: no jumps
    assert _on_driving_lane(t_junction_map, route.points)
    # the lanes follow the topology: off road 1 or 2 or 3, through a junction road, on to another road
    roads = [road for road, _ in route.lanes]
    assert len(roads) == 3 and roads[1] in (10, 11, 12)
    turns = np.abs(np.diff(np.unwrap(np.radians(route.yaw))))
    assert turns.max() < np.radians(20)  # no U-turns or zig-zags


def test_random_routes_are_reproducible(t_junction_graph):
    a = plan_random_route(t_junction_graph, 120.0, 3)
    b = plan_random_route(t_junction_graph, 120.0, 3)
    assert np.array_equal(a.points, b.points) and a.lanes == b.lanes
    different = [plan_random_route(t_junction_graph, 120.0, seed).points[0].tolist() for seed in range(8)]
    assert len({tuple(p) for p in different}) > 1


def test_impossible_length_is_refused(t_junction_graph):
    with pytest.raises(RoutePlanningError, match="lower env.route_length_m"):
        plan_random_route(t_junction_graph, 5000.0, 0, attempts=5)


def test_route_through_key_points_changes_lane_and_turns(t_junction_map, t_junction_graph):
    # From the outer lane of road 1 (CARLA y = +5.25) to road 3: only the inner lane (-1) enters the junction,
    # so the route must change lanes first, then take the left turn (road 11) onto road 3.
    route = plan_route(t_junction_graph, [(10.0, 5.25, 0.0), (111.75, -60.0, 0.0)], spacing=1.0)
    assert route.lanes == [(1, -2), (1, -1), (11, -1), (3, -1)]
    assert np.allclose(route.points[0], [10.0, 5.25], atol=1.0)
    assert np.allclose(route.points[-1], [111.75, -60.0], atol=1.0)
    assert _on_driving_lane(t_junction_map, route.points)
    assert 150.0 < route.length < 175.0


def test_no_path_between_key_points(t_junction_graph):
    # road 3's lane -1 leads away from the junction and dead-ends: nothing leads back to road 1
    with pytest.raises(RoutePlanningError, match="no drivable path"):
        plan_route(t_junction_graph, [(111.75, -60.0, 0.0), (50.0, 1.75, 0.0)])
