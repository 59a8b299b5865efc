"""Traffic lights: the backend's schedule, stop lines from a trigger volume on the OpenDRIVE test map, and
red-light crossings."""

import numpy as np
import pytest

from envs.carla.lights import (
    GREEN,
    RED,
    YELLOW,
    LightSchedule,
    StopLines,
    red_light_crossed,
    route_stop_lines,
    schedule_from_lights,
    scheduled_states,
    segments_cross,
    stop_lines_for_light,
    to_sim_state,
)


def test_one_group_takes_turns_green_yellow_then_all_red():
    schedule = LightSchedule(((0, 1),), np.array([[10.0, 3.0, 2.0], [10.0, 3.0, 2.0]]))
    expected = {0.0: (GREEN, RED), 9.9: (GREEN, RED), 10.0: (YELLOW, RED), 13.5: (RED, RED),  # clearance
                15.0: (RED, GREEN), 25.0: (RED, YELLOW), 29.0: (RED, RED), 30.0: (GREEN, RED)}  # 30 s cycle
    for time_s, states in expected.items():
        assert tuple(scheduled_states(schedule, time_s, 0.0)) == states, time_s


def test_offsets_shift_groups_and_ungrouped_lights_stay_green():
    schedule = LightSchedule(((0, 1), (2,)), np.array([[10.0, 3.0, 2.0]] * 3 + [[1.0, 1.0, 1.0]]))
    # offset 0.5 starts group 0 half way through its 30 s cycle: light 1 is green
    assert tuple(scheduled_states(schedule, 0.0, 0.5)[:2]) == (RED, GREEN)
    assert scheduled_states(schedule, 0.0, 0.0)[3] == GREEN  # light 3 is in no group
    # the same time and offset always give the same states (they are a pure function)
    assert np.array_equal(scheduled_states(schedule, 123.4, 0.3), scheduled_states(schedule, 123.4, 0.3))


def test_schedule_from_lights_groups_and_orders_by_pole():
    class FakeLight:
        def __init__(self, x, pole, group):
            self.x, self.pole, self.group = x, pole, group

        def get_location(self):
            return type("L", (), {"x": self.x, "y": 0.0})()

        def get_group_traffic_lights(self):
            return self.group

        def get_pole_index(self):
            return self.pole

        def get_green_time(self):
            return 10.0

        def get_yellow_time(self):
            return 3.0

        def get_red_time(self):
            return 2.0

    a, b, c = FakeLight(0.0, 1, []), FakeLight(5.0, 0, []), FakeLight(50.0, 0, [])
    a.group = b.group = [a, b]
    c.group = [c]
    schedule = schedule_from_lights([a, b, c])
    assert schedule.groups == ((1, 0), (2,))  # pole 0 (light b) first
    assert schedule.times.shape == (3, 3) and schedule.cycle_s(0) == 30.0


def test_states_to_the_simulators_constants():
    from envs.driving.lights import GREEN as SIM_GREEN
    from envs.driving.lights import RED as SIM_RED
    from envs.driving.lights import YELLOW as SIM_YELLOW

    assert to_sim_state(np.array([RED, YELLOW, GREEN, 3, 4])).tolist() == [SIM_RED, SIM_YELLOW, SIM_GREEN, -1, -1]


def test_segments_cross():
    a, b = np.array([[0.0, -1.0], [5.0, -1.0]]), np.array([[0.0, 1.0], [5.0, 1.0]])
    assert segments_cross(np.array([-1.0, 0.0]), np.array([1.0, 0.0]), a, b).tolist() == [True, False]
    assert not segments_cross(np.array([-1.0, 2.0]), np.array([1.0, 2.0]), a, b).any()


@pytest.fixture(scope="module")
def light_on_road_1(t_junction_map):
    """A light beside road 1 just before the junction, its trigger volume over the two lanes towards the junction
    (CARLA y from 0 to +7: lanes -1 at y = 1.75 and -2 at y = 5.25)."""
    import carla

    transform = carla.Transform(carla.Location(x=95.0, y=8.0, z=0.0), carla.Rotation(yaw=90.0))
    # In the light's frame x runs across the road (yaw 90: world +y); the box's centre is 5 m towards the road.
    volume = carla.BoundingBox(carla.Location(x=-5.0, y=0.0, z=0.0), carla.Vector3D(3.0, 1.0, 1.0))
    return stop_lines_for_light(t_junction_map, transform, volume, light_index=4)


def test_stop_lines_from_a_trigger_volume(light_on_road_1):
    lines = light_on_road_1
    assert len(lines) == 2 and lines.light.tolist() == [4, 4]
    centres = (lines.a + lines.b) / 2
    # followed along each lane to the junction entrance at x = 100, across the lane (along CARLA y)
    assert np.allclose(centres[:, 0], 100.0, atol=1.0)
    assert sorted(np.round(centres[:, 1], 2).tolist()) == [1.75, 5.25]
    assert np.allclose(lines.direction, [[1.0, 0.0], [1.0, 0.0]], atol=1e-6)
    assert np.allclose(np.abs(lines.a[:, 1] - lines.b[:, 1]), 0.9 * 3.5)


def test_red_light_crossing_needs_red_and_forward_motion(light_on_road_1):
    lines = light_on_road_1
    states = np.full(5, RED)
    before, after = np.array([98.0, 1.75]), np.array([101.0, 1.75])
    assert red_light_crossed(before, after, lines, states).sum() == 1
    assert not red_light_crossed(after, before, lines, states).any()  # reversing over the line
    states[4] = GREEN
    assert not red_light_crossed(before, after, lines, states).any()
    assert not red_light_crossed(before, after, StopLines.empty(), states).any()


def test_route_stop_lines(light_on_road_1):
    points = np.stack([np.arange(0.0, 121.0), np.full(121, 1.75)], axis=1)
    s = np.arange(0.0, 121.0)
    stop_s, stop_light = route_stop_lines(points, s, light_on_road_1)
    assert stop_light.tolist() == [4] and stop_s[0] == pytest.approx(light_on_road_1.a[0, 0], abs=1.0)
    backwards = route_stop_lines(points[::-1].copy(), s, light_on_road_1)
    assert len(backwards[0]) == 0  # driving the other way does not face this light
