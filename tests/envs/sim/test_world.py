"""The simulator's episodes: progress, infractions, termination, determinism and bad input."""

import pytest
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT, BackendError
from envs.driving.expert import route_follower
from envs.sim.config import LightConfig, SimConfig
from envs.sim.towngen import TownConfig
from envs.sim.world import DrivingSim
from tests.envs.conftest import EMPTY_WORLD

ROUTE = OBSERVATION_LAYOUT.slices["route"]


def controls(num_worlds, throttle=0.5, brake=0.0, steer=0.0):
    return torch.tensor([[throttle, brake, steer]]).repeat(num_worlds, 1)


def test_route_progress_increases_when_following_the_route(straight_sim):
    sim = straight_sim(4)
    obs = sim.reset(0)
    progress = []
    for _ in range(100):
        result = sim.step(route_follower(obs))
        obs = result.observation
        progress.append(result.info["route_progress_m"])
        assert not result.terminated.any()
    progress = torch.stack(progress)
    assert (progress[1:] >= progress[:-1] - 1e-4).all()
    assert (progress[-1] > 40).all()  # ~8 m/s for most of 10 s


def test_following_a_procedural_route_completes_it():
    # Only the road: the route follower ignores other road users and lights.
    sim = DrivingSim(SimConfig(num_worlds=8, num_towns=2, town=TownConfig(num_routes=8, route_length_m=150.0),
                               lights=LightConfig(enabled=False), **EMPTY_WORLD))
    obs = sim.reset(5)
    done = torch.zeros(8, dtype=torch.bool)
    completed = torch.zeros(8, dtype=torch.bool)
    for _ in range(400):
        result = sim.step(route_follower(obs))
        obs = result.observation
        completed |= result.info["route_completed"]
        done |= result.terminated | result.truncated
        if done.all():
            break
    assert completed.float().mean() >= 0.75, "a simple route follower completes most procedural routes"


def test_reward_is_progress_when_nothing_goes_wrong(straight_sim):
    sim = straight_sim(2)
    sim.reset(0)
    before = sim.state.route_s.clone()
    result = sim.step(controls(2, throttle=1.0))
    progress = sim.state.route_s - before
    assert torch.allclose(result.reward, 0.1 * progress)


def test_speed_limit_caps_the_progress_reward_and_overspeed_is_penalised(straight_sim):
    from envs.driving.config import RewardConfig

    limited = RewardConfig(speed_limit=5.0, overspeed_per_ms=0.2)
    sims = [straight_sim(2), straight_sim(2, reward=limited)]
    for sim in sims:
        sim.reset(0)
    for _ in range(40):  # full throttle for 4 s: about 15 m/s, above the 5 m/s limit
        free, capped = (sim.step(controls(2, throttle=1.0)) for sim in sims)
    speed = sims[1].state.speed
    assert (speed > 10.0).all()
    assert torch.allclose(free.reward, torch.full((2,), 0.1 * 0.1 * 15.0), atol=0.02)  # 0.1 per m, 15 m/s x 0.1 s
    # progress counted at 5 m/s at most (0.1 x 0.5 m), less 0.2 per m/s above the limit
    assert torch.allclose(capped.reward, 0.1 * 0.5 - 0.2 * (speed - 5.0), atol=1e-4)


def test_a_red_light_ahead_lowers_the_limit_to_a_speed_that_can_still_stop():
    from envs.driving.config import RewardConfig

    reward = RewardConfig(speed_limit=10.0, stop_decel=2.0, overspeed_per_ms=0.1)
    speed = torch.tensor([8.0, 8.0, 8.0])
    progress = speed * 0.1
    red = torch.tensor([float("inf"), 9.0, 1.0])  # no red light; its line 9 m ahead; 1 m ahead
    got = reward.dense(progress, speed, torch.zeros(3), 0.1, red)
    near = (2.0 * 2.0 * 8.0) ** 0.5  # sqrt(2 a (9 - 1)) = 5.66 m/s can still stop 1 m short of the line
    expected = torch.tensor([0.1 * 0.8, 0.1 * near * 0.1 - 0.1 * (8.0 - near), 0.0 - 0.1 * 8.0])
    assert torch.allclose(got, expected, atol=1e-5)
    off = RewardConfig(stop_decel=0.0, overspeed_per_ms=0.0)
    assert torch.equal(off.dense(progress, speed, torch.zeros(3), 0.1, red), 0.1 * progress)


def test_an_obstacle_in_the_way_lowers_the_limit_to_a_speed_that_can_still_stop_behind_it():
    from envs.driving.config import RewardConfig

    reward = RewardConfig(stop_decel=0.0, obstacle_decel=2.0, overspeed_per_ms=0.1)
    speed = torch.tensor([8.0, 8.0, 8.0])
    progress = speed * 0.1
    room = torch.tensor([float("inf"), 4.0, -1.0])  # nothing in the way; 4 m of room; already too close
    lead = torch.tensor([0.0, 3.0, 0.0])
    got = reward.dense(progress, speed, torch.zeros(3), 0.1, None, (room, lead))
    behind = (3.0 ** 2 + 2 * 2.0 * 4.0) ** 0.5  # sqrt(v_lead^2 + 2 a room) = 5 m/s
    expected = torch.tensor([0.1 * 0.8, 0.1 * behind * 0.1 - 0.1 * (8.0 - behind), 0.0 - 0.1 * 8.0])
    assert torch.allclose(got, expected, atol=1e-5)
    off = RewardConfig(stop_decel=0.0, obstacle_decel=0.0, overspeed_per_ms=0.1)
    assert torch.equal(off.dense(progress, speed, torch.zeros(3), 0.1, None, (room, lead)), 0.1 * progress)


def test_the_simulator_shapes_its_reward_by_the_obstacle_its_observation_shows():
    from envs.driving.config import RewardConfig
    from envs.driving.expert import ExpertDriver

    # Two copies of a busy world driven alike; the reward does not touch the dynamics, so they stay equal.
    plain = RewardConfig(stop_decel=0.0, obstacle_decel=0.0, overspeed_per_ms=0.1)
    shaped = RewardConfig(stop_decel=0.0, obstacle_decel=3.0, overspeed_per_ms=0.1)
    sims = [DrivingSim(SimConfig(num_worlds=8, num_towns=2, town=TownConfig(num_routes=8), reward=reward))
            for reward in (plain, shaped)]
    obs = [sim.reset(list(range(8))) for sim in sims]
    hazards = ExpertDriver(vehicle=sims[1].config.vehicle)
    done = torch.zeros(8, dtype=torch.bool)
    seen = 0
    for _ in range(150):
        before = sims[0].state.route_s.minimum(sims[0].state.route_end_s)
        a, b = (sim.step(route_follower(o, target_speed=12.0)) for sim, o in zip(sims, obs, strict=True))
        assert torch.equal(a.observation, b.observation)
        progress = sims[0].state.route_s.minimum(sims[0].state.route_end_s) - before
        room, lead, _ = hazards.obstacle_in_way(b.observation)
        clean = ~done & ~torch.stack([a.info[name] for name in INFRACTIONS]).any(0)
        expected = shaped.dense(progress, sims[1].state.speed, sims[1].state.lateral_offset, 0.1, None, (room, lead))
        assert torch.allclose(b.reward[clean], expected[clean], atol=1e-5)
        assert torch.allclose(a.reward[clean], 0.1 * progress[clean], atol=1e-5)
        seen += int((clean & (room < 1e5) & (expected < a.reward - 1e-4)).sum())
        done |= a.terminated | a.truncated
        obs = [a.observation, b.observation]
        if done.all():
            break
    assert seen > 0, "the shaping never lowered a reward: the test drove past nothing"


def test_leaving_the_road_is_detected_and_terminates(straight_sim):
    sim = straight_sim(2)
    sim.reset(0)
    for _ in range(10):
        sim.step(controls(2, throttle=1.0))
    events = {name: torch.zeros(2, dtype=torch.bool) for name in INFRACTIONS}
    for _ in range(60):
        result = sim.step(controls(2, throttle=0.5, steer=1.0))  # hard right: off the road's edge
        for name in INFRACTIONS:
            events[name] |= result.info[name]
        if result.terminated.all():
            break
    assert result.terminated.all()
    assert (events["collision_static"] | events["off_road"]).all()
    assert result.reward.min() < -5  # the penalty arrives with the event


@pytest.mark.parametrize("y,off_road,static", [
    (-1.75, False, False),  # centre of the eastbound lane
    (-4.5, True, False),  # centre 1 m past the road edge (y = -3.5), body still within the 2.5 m kerb
    (-8.0, True, True),  # past the kerb: the body hits what stands beside the road
])
def test_off_road_and_static_collision_geometry(straight_sim, y, off_road, static):
    sim = straight_sim(1)
    sim.reset(0)
    sim.state.x[0], sim.state.y[0], sim.state.yaw[0] = 100.0, y, 0.0
    result = sim.step(controls(1, throttle=0.0))
    assert result.info["off_road"].item() is off_road
    assert result.info["collision_static"].item() is static
    assert result.terminated.item() is (off_road or static)


def test_ended_worlds_stay_frozen_and_earn_nothing(straight_sim):
    sim = straight_sim(2)
    sim.reset(0)
    sim.state.step[0] = sim.config.max_episode_steps - 1  # world 0 times out on the next step
    result = sim.step(controls(2))
    assert result.truncated.tolist() == [True, False]
    assert result.info["timeout"].tolist() == [True, False]
    frozen = sim.snapshot([0]).tensors["floats"]
    for _ in range(5):
        result = sim.step(controls(2, throttle=1.0))
        assert result.reward[0] == 0 and result.truncated[0]
        assert not result.info["timeout"][0]  # an event is reported once, when it happens
    assert torch.equal(sim.snapshot([0]).tensors["floats"], frozen)
    assert sim.done().tolist() == [True, False]


def test_same_seed_same_episode_and_seeds_differ():
    config = SimConfig(num_worlds=4, num_towns=4, town=TownConfig(num_routes=8, route_length_m=150.0))
    a, b = DrivingSim(config), DrivingSim(config)
    assert torch.equal(a.reset(11), b.reset(11))
    for _ in range(20):
        ra, rb = a.step(controls(4)), b.step(controls(4))
        assert torch.equal(ra.observation, rb.observation) and torch.equal(ra.reward, rb.reward)
    assert not torch.equal(a.reset(11), a.reset(12))


def test_explicit_episode_seeds_pick_the_same_route_in_any_world():
    config = SimConfig(num_worlds=3, num_towns=4, town=TownConfig(num_routes=8, route_length_m=150.0))
    sim = DrivingSim(config)
    obs = sim.reset([7, 8, 7])
    assert torch.equal(obs[0], obs[2]) and not torch.equal(obs[0], obs[1])
    with pytest.raises(BackendError, match="one per world"):
        sim.reset([1, 2])


def test_eval_split_uses_held_out_towns():
    town = TownConfig(num_routes=8, route_length_m=150.0)
    train = DrivingSim(SimConfig(num_worlds=4, num_towns=3, town=town))
    held_out = DrivingSim(SimConfig(num_worlds=4, num_towns=3, town=town, split="eval"))
    train.reset(0)
    held_out.reset(0)
    train_seeds = set(train.bank.seed_of_slot.tolist())
    eval_seeds = set(held_out.bank.seed_of_slot.tolist())
    assert train_seeds.isdisjoint(eval_seeds)
    assert {t.fingerprint() for t in train.bank.towns}.isdisjoint({t.fingerprint() for t in held_out.bank.towns})


def test_bad_input_is_rejected_clearly(straight_sim):
    sim = straight_sim(2)
    with pytest.raises(BackendError, match="before reset"):
        sim.step(controls(2))
    sim.reset(0)
    with pytest.raises(BackendError, match="shape"):
        sim.step(torch.zeros(3, 3))
    with pytest.raises(BackendError, match="NaN"):
        sim.step(torch.full((2, 3), float("nan")))
    with pytest.raises(BackendError, match="world ids"):
        sim.snapshot([5])
    with pytest.raises(BackendError, match="as many sources"):
        sim.clone([0], [0, 1])


def test_out_of_range_controls_are_clipped_like_carla(straight_sim):
    sim = straight_sim(2)
    sim.reset(0)
    sim.step(torch.tensor([[5.0, -1.0, 3.0], [1.0, 0.0, 1.0]]))
    assert torch.equal(sim.state.last_control[0], sim.state.last_control[1])


@pytest.mark.parametrize("field,value,match", [
    ("num_worlds", 0, "num_worlds"), ("dt", 0.0, "dt"), ("map", "moon", "map"),
    ("terminate_on", ("crash",), "unknown infractions"), ("device", "tpu", "device"),
])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**{field: value})


def test_observation_is_finite_and_in_ego_frame(straight_sim):
    sim = straight_sim(3)
    obs = sim.reset(0)
    assert obs.shape == (3, OBSERVATION_LAYOUT.size) and torch.isfinite(obs).all()
    route = obs[:, ROUTE].view(3, -1, 2) * OBSERVATION_LAYOUT.distance_scale
    # On a straight lane, facing along it: the route points lie straight ahead every 5 m.
    expected = torch.arange(1, 11) * 5.0
    assert torch.allclose(route[..., 0], expected.expand(3, -1), atol=1e-3)
    assert route[..., 1].abs().max() < 1e-3


def test_a_world_without_traffic_or_pedestrians_skips_the_obstacle_shaping(monkeypatch):
    from envs.driving.config import RewardConfig

    # Nothing can be in the way, so the default shaping must neither run nor change the reward.
    sims = [DrivingSim(SimConfig(num_worlds=4, reward=RewardConfig(obstacle_decel=decel), **EMPTY_WORLD))
            for decel in (0.0, 3.0)]
    monkeypatch.setattr(sims[1]._hazards, "obstacle_in_way", lambda obs: pytest.fail("obstacle read in an empty world"))
    obs = [sim.reset(list(range(4))) for sim in sims]
    for _ in range(20):
        a, b = (sim.step(route_follower(o)) for sim, o in zip(sims, obs, strict=True))
        assert torch.equal(a.reward, b.reward)
        obs = [a.observation, b.observation]


def test_forfeit_route_charges_a_branch_that_ends_early_for_the_route_it_loses(straight_sim):
    # Three hand-built branches on a 60 m route from the same start: world 0 steers off the road (ends early),
    # world 1 creeps (survives the horizon), world 2 drives straight at full throttle (completes the route).
    from envs.driving.config import RewardConfig
    from grpo.rollout import discounted_returns

    route = {"num_routes": 2, "route_length_m": 60.0}
    actions = torch.tensor([[1.0, 0.0, 1.0], [0.08, 0.0, 0.0], [1.0, 0.0, 0.0]])
    runs = {}
    for forfeit in (0.0, 1.0):
        sim = straight_sim(3, town=TownConfig(**route), reward=RewardConfig(forfeit_route=forfeit))
        sim.reset([5, 5, 5])
        rewards, ended_at_m = [], torch.full((3,), float("nan"))
        for _ in range(80):
            result = sim.step(actions)
            rewards.append(result.reward)
            ended = (result.terminated | result.truncated) & ended_at_m.isnan()
            ended_at_m = torch.where(ended, result.info["route_progress_m"], ended_at_m)
        runs[forfeit] = discounted_returns(torch.stack(rewards), 1.0), ended_at_m
    (plain, ended_at_m), (charged, _) = runs[0.0], runs[1.0]
    length = (sim.state.route_end_s - sim.state.route_start_s)[0].item()  # the route as planned: 60 m
    assert length == pytest.approx(60.0, abs=1e-3)
    assert ended_at_m[0] < 30.0 and ended_at_m[1].isnan() and ended_at_m[2] >= length
    # the crash pays 0.1 per metre of the route it did not drive; the others pay nothing more
    assert charged[0].item() == pytest.approx(plain[0].item() - 0.1 * (length - ended_at_m[0].item()), abs=1e-4)
    assert charged[1].item() == pytest.approx(plain[1].item(), abs=1e-6)
    assert charged[2].item() == pytest.approx(plain[2].item(), abs=1e-6)
    # completed > survived > crashed; the completed route is worth its progress (0.1 per metre)
    assert charged[2] > charged[1] > charged[0]
    assert charged[2].item() == pytest.approx(0.1 * length, abs=0.05)
