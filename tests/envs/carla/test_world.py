"""envs/carla/world.py's CarlaWorld driven against a stand-in client (tests/envs/carla/stand_ins.py) whose
walker AI controllers behave as the carla client's: the walker restore path, the read-back after a restore,
and one world per process."""

from types import SimpleNamespace

import numpy as np
import pytest

from envs.api import BackendError
from envs.carla.config import CarlaConfig, CarlaTrafficConfig
from envs.carla.world import CarlaWorld
from tests.envs.carla.stand_ins import StandInClient, WalkerTown

pytest.importorskip("carla")  # commands and transforms are the real client's classes


def stand_in_world(num_walkers=1):
    server = SimpleNamespace(host="127.0.0.1", address="stand-in:2000",
                             ports=SimpleNamespace(rpc=2000, traffic_manager=8000))
    config = CarlaConfig(traffic=CarlaTrafficConfig(num_vehicles=0, num_walkers=num_walkers), spawn_settle_steps=2)
    return CarlaWorld(0, server, config, WalkerTown(), client=StandInClient())


def test_walkers_are_restored_with_new_controllers_and_read_back():
    world = stand_in_world()
    stand_in = world.client.world
    try:
        world.reset(4)
        walker = world.walkers[0]
        assert stand_in.agents_of(walker.id) == 1
        for _ in range(5):
            world.step(np.array([0.5, 0.0, 0.0]))
        actors, episode = world.actors.copy(), world.episode
        target = actors.walker_target[0].copy()
        for _ in range(10):
            world.step(np.array([0.5, 0.0, 0.0]))
        old_controller = world.controllers[0]
        assert not np.allclose(world.actors.walker_pose[0, :2], actors.walker_pose[0, :2])  # it walked on
        stand_in.log.clear()
        world.restore(actors, episode)

        # The old controller was stopped, then destroyed; a new one was spawned, and started only after the
        # settling tick, from where the walker landed; one crowd agent, walking to the snapshot's target.
        events = [(kind, actor) for kind, actor, *_ in stand_in.log]
        assert events.index(("stop", old_controller.id)) < events.index(("destroy", old_controller.id))
        new_controller = world.controllers[0]
        assert new_controller.id != old_controller.id and stand_in.agents_of(walker.id) == 1
        start_frame = next(e[-1] for e in stand_in.log if e[:2] == ("start", new_controller.id))
        place_frame = max(e[-1] for e in stand_in.log if e[:2] == ("place", walker.id))
        assert start_frame > place_frame
        assert np.allclose(stand_in.crowd[new_controller.id]["target"], target)
        # What the world holds now is read back from the server, and it is where the snapshot put the walker.
        assert world.actors.walker_pose[0, :2] == pytest.approx(actors.walker_pose[0, :2], abs=1e-6)
        assert world.restore_error["actors_max_m"] < 1e-6 and world.restore_error["ego_m"] < 1e-6
        before = np.linalg.norm(target[:2] - world.actors.walker_pose[0, :2])
        world.step(np.array([0.5, 0.0, 0.0]))
        assert np.linalg.norm(target[:2] - world.actors.walker_pose[0, :2]) < before  # walks on from there
    finally:
        world.close()
    assert ("shut_down", ()) in world.client.traffic_manager_log


def test_a_teleport_without_new_controllers_would_be_undone():
    """The stand-in's crowd is faithful: an agent that lives on pulls its teleported walker back (what the
    restore above avoids by stopping the old controller)."""
    world = stand_in_world()
    stand_in = world.client.world
    try:
        world.reset(4)
        walker = world.walkers[0]
        for _ in range(3):
            world.step(np.array([0.0, 0.0, 0.0]))
        import carla

        world.client.apply_batch_sync([carla.command.ApplyTransform(walker.id, carla.Transform(
            carla.Location(x=-50.0, y=-50.0, z=0.0)))])
        stand_in.tick()
        assert walker.seen[0] > -40.0  # the old agent put it back
    finally:
        world.close()


def test_one_carla_world_per_process():
    first = stand_in_world()
    try:
        with pytest.raises(BackendError, match="process of its own"):
            stand_in_world()
    finally:
        first.close()
    second = stand_in_world()  # the first one's traffic manager is shut down: the process is free again
    second.close()
