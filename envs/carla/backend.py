"""``CarlaBackend``: the :mod:`envs.api` contract over CARLA servers, one world (one ego) per server.

    python train.py env=carla env.num_services=4        # launches 4 servers from $CARLA_ROOT
    python train.py env=carla env.num_services=2 'env.hosts=[gpu1:2000,gpu2:2000]'

World ``i`` lives on server ``i``. A real run holds **one** world per process: the carla client ticks every
traffic manager of a process on every ``world.tick()``, so :func:`envs.factory.build_backend` starts one
service process per server, each holding a ``CarlaBackend`` of one world (:mod:`envs.services.carla_servers`).
Several worlds in one backend remain possible with stand-in worlds (tests), where calls run on every world
at once (one thread per world).

* ``reset`` / ``step`` / ``observe``: the shared observation layout, reward and infractions (see
  :mod:`envs.carla.state`); ended worlds are not ticked and stay frozen. ``observe_raster``: the simulator's
  bird's-eye raster, drawn from the map and the world state (:mod:`envs.carla.raster`), for CNN policies.
* ``snapshot``: the last state read from each server, as plain tensors (:func:`envs.carla.state.pack_snapshot`),
  so it is free and travels as bytes. ``restore`` puts it onto any server running the same map, matching
  actors by role name (:meth:`envs.carla.world.CarlaWorld.restore`). ``clone`` is snapshot + restore.
* **Drift.** A restore is not exact (what CARLA cannot restore is listed in :mod:`envs.carla.world`).
  :func:`measure_drift` replays actions from a snapshot and reports, per actor and step, how far positions
  drift from the source and between two restores (the second is what separates the branches of one GRPO
  group for reasons other than the policy). With ``env.drift_check_every=N`` the backend measures it on its
  own every N snapshot calls, logs it (logger ``envs.carla``) and keeps the last result in :meth:`metrics`.
* **Failures.** A call that fails because a server died or stopped answering restarts that server (launched:
  a new process; external: waits for it to answer again), after shutting the old world's traffic manager
  down, rebuilds its world and starts a fresh episode there. A step reports ``info["service_failed"]``
  (reward 0, terminated) for that world, as the multi-service backend does; reset and restore are tried once
  more on the restarted server, then raise :class:`~envs.api.ServiceFailure`. ``restarts`` counts them.
  Errors that are not a dead server are raised as :class:`~envs.api.BackendError`.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from envs.api import (
    ACTION_HIGH,
    ACTION_LOW,
    INFRACTIONS,
    OBSERVATION_LAYOUT,
    RESTARTS_METRIC,
    BackendBase,
    BackendError,
    BackendSpec,
    ServiceFailure,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
    derive_episode_seeds,
)
from envs.carla.config import CarlaConfig
from envs.carla.raster import draw_rasters
from envs.carla.server import ServerManager
from envs.carla.state import (
    STATE_VERSION,
    ActorStates,
    EpisodeState,
    build_observations,
    observation_view,
    pack_snapshot,
    progress_info,
    unpack_snapshot,
    vehicle_keys,
    walker_keys,
)
from envs.driving.raster import EgoFrame

BACKEND_NAME = "carla"
LOGGER = logging.getLogger("envs.carla")
INFO_FLOATS = ("route_progress_m", "route_completion", "distance_m", "speed")
INFO_BOOLS = (*INFRACTIONS, "route_completed", "lane_invasion", "outside_route_lanes")
STEP_FLOATS = ("outside_route_lanes_m", "traffic_speed")  # leaderboard 2.0 measurements of the step (envs.metrics)


class CarlaBackend(BackendBase):
    """CARLA servers as a backend (see the module docstring); ``num_worlds`` = servers = ``config.num_worlds``.
    Its spec offers ``set_split`` and in-place evaluation (the trainer's evaluation reuses these servers instead of
    opening second clients on them or launching more).

    ``servers`` may be given (a started :class:`~envs.carla.server.ServerManager`, e.g. shared by tests);
    otherwise they are launched from ``config.carla_root`` / $CARLA_ROOT or connected to at ``config.hosts``,
    waiting up to ``start_timeout_s`` for each. ``world_factory(index, server, config, town)`` makes a world
    (default :class:`~envs.carla.world.CarlaWorld`; tests pass a stand-in with the same methods)."""

    backend_name = BACKEND_NAME

    def __init__(self, config: CarlaConfig, *, start_timeout_s: float = 120.0, servers: ServerManager | None = None,
                 world_factory: Callable | None = None):
        if world_factory is None:
            world_factory = import_world_class(config.world_class)
            from envs.carla.world import CarlaWorld

            if config.num_worlds > 1 and isinstance(world_factory, type) and issubclass(world_factory, CarlaWorld):
                raise BackendError(f"a CarlaBackend in one process drives one CARLA server, got num_worlds="
                                   f"{config.num_worlds}: the carla client ticks every traffic manager of a process "
                                   "on every tick, so build it with envs.factory.build_backend (one service process "
                                   "per server)")
        self._make_world = world_factory
        self.config = config
        self.spec = BackendSpec(BACKEND_NAME, dt=config.dt, max_episode_steps=config.max_episode_steps, rasters=True,
                                splits=True, evaluates_in_place=True)
        self.num_worlds = config.num_worlds
        self.device = torch.device(config.device)
        self.layout = OBSERVATION_LAYOUT
        self.observation_size = self.layout.size
        self.restarts = 0
        self.drift: DriftReport | None = None
        self._snapshots_taken = 0
        self._raster_frame: EgoFrame | None = None  # made on the first observe_raster
        self._low = np.array(ACTION_LOW)
        self._high = np.array(ACTION_HIGH)
        self._owns_servers = servers is None
        self._pool = ThreadPoolExecutor(max_workers=self.num_worlds, thread_name_prefix="carla-world")
        self.worlds: list = []  # CarlaWorld per server
        self.servers = servers
        atexit.register(self.close)
        try:
            if self.servers is None:
                self.servers = ServerManager.from_config(config, self.num_worlds, start_timeout_s).start()
            elif len(self.servers.servers) < self.num_worlds:
                raise BackendError(f"{self.num_worlds} worlds need {self.num_worlds} servers; the given manager holds "
                                   f"{len(self.servers.servers)}")
            # The first world builds the town data (map, lane graph, lights, blueprints); the rest share it.
            first = self._make_world(0, self.servers.servers[0], config, None)
            self.town = first.town
            rest = list(self._pool.map(lambda i: self._make_world(i, self.servers.servers[i], config, self.town),
                                       range(1, self.num_worlds)))
            self.worlds = [first, *rest]
        except BaseException:
            self.close()
            raise
        self.signature = self._signature()

    def _signature(self) -> str:
        """What a snapshot's meaning depends on: the map, its lights and blueprints, the routes, the slots and
        the step."""
        config, town = self.config, self.town
        routes = {kind: _file_digest(path) for kind, path in town.route_files.items() if path}
        text = repr((STATE_VERSION, config.town, config.fixed_delta_seconds, config.light_control,
                     config.traffic.num_vehicles, config.traffic.num_walkers, config.route_length_m,
                     config.planner_resolution_m, config.route_resolution_m, config.lane_change_cost_m,
                     config.ego_blueprint, town.vehicle_blueprints, town.walker_blueprints, town.light_keys,
                     sorted(routes.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- running calls on the servers ---

    def _run(self, worlds: Sequence[int], call: Callable[[int], object]) -> list[object]:
        """``call(world)`` for each world in parallel. Waits for all of them; then a dead server is restarted
        (ServiceFailure), any other error raised as BackendError."""
        futures = [self._pool.submit(call, world) for world in worlds]
        outcomes = []
        for future in futures:
            try:
                outcomes.append((future.result(), None))
            except Exception as error:  # sorted out below, once every call has finished
                outcomes.append((None, error))
        failure: BaseException | None = None
        for world, (_, error) in zip(worlds, outcomes, strict=True):
            if error is None:
                continue
            if isinstance(error, RuntimeError) and not isinstance(error, BackendError) and \
                    self._server_failed(world, error):
                failure = failure or ServiceFailure(world, f"CARLA server failed ({error}); restarted, with a "
                                                           "fresh episode")
            elif failure is None:
                failure = error if isinstance(error, BackendError) else \
                    BackendError(f"world {world} (server {self.worlds[world].server.address}): {error}")
        if failure is not None:
            raise failure
        return [result for result, _ in outcomes]

    def _server_failed(self, world: int, error: BaseException) -> bool:
        """Whether ``error`` means server ``world`` is dead or hung; if so, restart it and start a fresh episode
        on it (True)."""
        if self.servers.healthy(world, timeout_s=min(10.0, self.config.client_timeout_s)):
            return False
        self._restart(world, error)
        return True

    def _restart(self, world: int, error: BaseException) -> None:
        if self.restarts >= self.config.max_restarts:
            raise ServiceFailure(world, f"CARLA server failed ({error}) after {self.restarts} restarts "
                                        f"(env.max_restarts={self.config.max_restarts})") from error
        LOGGER.warning("CARLA server %d (%s) failed: %s; restarting it", world, self.worlds[world].server.address,
                       error)
        release = getattr(self.worlds[world], "release", None)
        if release is not None:  # its traffic manager must not outlive it (see envs.carla.world)
            release()
        server = self.servers.restart(world)
        self.worlds[world] = self._make_world(world, server, self.config, self.town)
        self.restarts += 1
        self.worlds[world].reset(derive_episode_seeds(self.restarts, [world])[0])

    # --- the contract ---

    def episode_seeds(self, seed: int | Sequence[int], ids: list[int]) -> list[int]:
        if isinstance(seed, int):
            return derive_episode_seeds(seed, ids)
        seeds = [int(s) for s in seed]
        if len(seeds) != len(ids):
            raise BackendError(f"reset got {len(seeds)} episode seeds for {len(ids)} worlds; give one per world or "
                               "a single int")
        return seeds

    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds).tolist()
        seeds = self.episode_seeds(seed, ids)
        by_world = dict(zip(ids, seeds, strict=True))
        self._run_retrying(ids, lambda world: self.worlds[world].reset(by_world[world]))
        return self.observe(ids)

    def _run_retrying(self, worlds: Sequence[int], call: Callable[[int], object]) -> list[object]:
        """``_run``, tried once more when a server failed (and was restarted) during the first try."""
        try:
            return self._run(worlds, call)
        except ServiceFailure:
            return self._run(worlds, call)

    def step(self, actions: torch.Tensor) -> StepResult:
        check_actions(actions, self.num_worlds)
        self._require_episodes()
        controls = np.clip(actions.detach().cpu().double().numpy(), self._low, self._high)
        was_done = [self.worlds[w].episode.done for w in range(self.num_worlds)]
        rewards = np.zeros(self.num_worlds, dtype=np.float32)
        info = {name: np.zeros(self.num_worlds, dtype=np.float32) for name in (*INFO_FLOATS, *STEP_FLOATS)}
        info.update({name: np.zeros(self.num_worlds, dtype=bool) for name in INFO_BOOLS})
        outcomes, failed = self._step_all(controls)
        for world, outcome in enumerate(outcomes):
            if outcome is None:
                continue
            reward, events = outcome
            if not was_done[world]:
                rewards[world] = reward
                for name in INFO_BOOLS:
                    info[name][world] = bool(events.get(name, False))
                for name in STEP_FLOATS:
                    info[name][world] = float(events.get(name, 0.0))
            progress = progress_info(self.worlds[world].episode, self._route(world))
            for name in INFO_FLOATS:
                info[name][world] = progress[name]
        terminated = np.array([w.episode.terminated for w in self.worlds]) | failed
        truncated = np.array([w.episode.truncated for w in self.worlds]) & ~failed
        tensors = {name: torch.from_numpy(value).to(self.device) for name, value in info.items()}
        tensors["service_failed"] = torch.from_numpy(failed).to(self.device)
        return StepResult(self.observe(), torch.from_numpy(rewards).to(self.device),
                          torch.from_numpy(terminated).to(self.device), torch.from_numpy(truncated).to(self.device),
                          tensors)

    def _step_all(self, controls: np.ndarray) -> tuple[list, np.ndarray]:
        """Step every world in parallel; a world whose server died is restarted and marked failed."""
        futures = [self._pool.submit(self.worlds[w].step, controls[w]) for w in range(self.num_worlds)]
        outcomes, errors = [], []
        for future in futures:
            try:
                outcomes.append(future.result())
                errors.append(None)
            except Exception as error:  # sorted out below, once every world has stepped
                outcomes.append(None)
                errors.append(error)
        failed = np.zeros(self.num_worlds, dtype=bool)
        for world, error in enumerate(errors):
            if error is None:
                continue
            if isinstance(error, RuntimeError) and not isinstance(error, BackendError) and \
                    self._server_failed(world, error):
                failed[world] = True
            else:
                raise error if isinstance(error, BackendError) else BackendError(f"world {world}: {error}") from error
        return outcomes, failed

    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds).tolist()
        self._require_episodes(ids)
        views = [observation_view(self.layout, self.worlds[w].actors, self.worlds[w].episode, self._route(w))
                 for w in ids]
        return build_observations(self.layout, views).to(self.device)

    def observe_raster(self, world_ids: WorldIds = None) -> torch.Tensor:
        """The bird's-eye raster observation [len(world_ids), 6, S, S] uint8 (S = ``env.raster_size``) of the
        simulator's layout, drawn from the map and each world's last read state (envs.carla.raster): no server
        call, so a restored world shows the raster of the state it was restored to."""
        ids = as_world_ids(world_ids, self.num_worlds).tolist()
        self._require_episodes(ids)
        if self._raster_frame is None:
            self._raster_frame = EgoFrame(self.config.raster_size, self.config.raster_metres, torch.device("cpu"),
                                          torch.float64)  # float64: map coordinates reach kilometres
        worlds = [(self.worlds[w].actors, self._route(w), self.worlds[w].episode.route_s) for w in ids]
        return draw_rasters(self._raster_frame, self.town.raster, worlds).to(self.device)

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        ids = as_world_ids(world_ids, self.num_worlds).tolist()
        snapshot = self.capture(ids)
        self._snapshots_taken += 1
        every = self.config.drift_check_every
        if every and ids and self._snapshots_taken % every == 0:
            self._check_drift(ids[0], snapshot.select([0]))
        return snapshot

    def capture(self, world_ids: Sequence[int]) -> Snapshot:
        """The snapshot of ``world_ids`` (what ``snapshot`` returns, without its automatic drift check)."""
        self._require_episodes(world_ids)
        return pack_snapshot(self.backend_name, self.signature,
                             [(self.worlds[w].actors.copy(), self.worlds[w].episode) for w in world_ids],
                             {"town": self.config.town})

    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        self._check_snapshot(snapshot)
        if world_ids is None:
            world_ids = range(snapshot.num_worlds)
        ids = as_world_ids(world_ids, self.num_worlds).tolist()
        if len(ids) != snapshot.num_worlds:
            raise BackendError(f"snapshot holds {snapshot.num_worlds} worlds but {len(ids)} world ids were given; "
                               "pass one target world per snapshot world")
        if len(set(ids)) != len(ids):
            raise BackendError(f"restore got world ids {ids} with repeats; restore one snapshot world per world")
        states = dict(zip(ids, unpack_snapshot(snapshot), strict=True))
        self._run_retrying(ids, lambda world: self.worlds[world].restore(*states[world]))
        return self.observe(ids)

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        src = as_world_ids(src_ids, self.num_worlds)
        dst = as_world_ids(dst_ids, self.num_worlds)
        if src.shape != dst.shape:
            raise BackendError(f"clone needs as many sources as destinations, got {len(src)} and {len(dst)}")
        keep = src != dst  # a world cloned onto itself stays as it is
        if keep.any():
            self.restore(self.capture(src[keep].tolist()), dst[keep])

    def set_split(self, split: str) -> str:
        """Draw the routes of later resets from ``split`` ("train" or "eval"); returns the previous split. The
        evaluation switches the trainer's worlds to eval routes and back (between iterations every world is
        scratch: trunks are snapshots)."""
        if split not in ("train", "eval"):
            raise BackendError(f"split must be 'train' or 'eval', got {split!r}")
        previous = self.config.split
        self.config = dataclasses.replace(self.config, split=split)
        if hasattr(self.town, "config"):  # TownData picks routes by its config's split
            self.town.config = dataclasses.replace(self.town.config, split=split)
        for world in self.worlds:
            world.config = self.config
        return previous

    def process_groups(self) -> list[int]:
        """Process groups of the servers this backend launched (each server leads its own): a service process
        reports them, so its parent can stop them should the service die without closing."""
        if self.servers is None or not self._owns_servers:
            return []
        return [pid for pid in getattr(self.servers, "pids", []) if pid is not None]

    def close(self) -> None:
        """Hand external servers back (our actors destroyed, asynchronous mode); stop launched ones by process
        group; release the ports. Safe to call twice."""
        atexit.unregister(self.close)
        servers, self.servers = self.servers, None
        for world in self.worlds:
            if servers is not None and not servers.launched:
                world.close()  # hand an external server back: our actors destroyed, asynchronous mode
            elif hasattr(world, "release"):
                world.release()  # the traffic manager is shut down before its server is stopped
        self.worlds = []
        self._pool.shutdown(wait=False, cancel_futures=True)
        if servers is not None and self._owns_servers:
            servers.stop()

    # --- drift ---

    def metrics(self) -> dict[str, float]:
        """Numbers for the training log: server restarts (also as RESTARTS_METRIC), the worst restore read-back
        errors and the last automatic drift measurement."""
        out = {RESTARTS_METRIC: float(self.restarts), "carla/restarts": float(self.restarts)}
        errors = [getattr(world, "restore_error", {}) for world in self.worlds]
        for name in ("ego_m", "actors_max_m", "ego_speed_ms"):
            values = [e[name] for e in errors if name in e and np.isfinite(e[name])]
            if values:
                out[f"carla/restore_error/{name}"] = float(max(values))
        if self.drift is not None:
            out.update({f"carla/{k}": v for k, v in self.drift.summary().items()})
        return out

    def _check_drift(self, world: int, snapshot: Snapshot) -> None:
        """The automatic drift measurement on ``world``, just snapshotted: its own continuation with the ego's
        control held is the source. The world is left restored to the snapshot (so, approximately, as it was)."""
        actions = np.repeat(self._held_action(snapshot)[None], self.config.drift_check_steps, axis=0)
        try:
            self.drift = measure_drift(self, world, actions, snapshot=snapshot, from_source=True)
        except ServiceFailure:
            return  # the server died while measuring: it has been restarted; the next check will tell
        LOGGER.info("CARLA restore drift on one server over %d steps: %s", self.config.drift_check_steps,
                    ", ".join(f"{k}={v:.3f}" for k, v in self.drift.summary().items()))

    @staticmethod
    def _held_action(snapshot: Snapshot) -> np.ndarray:
        control = snapshot.tensors["vehicle_control"][0, 0].numpy()  # throttle, steer, brake, ...
        return np.array([control[0], control[2], control[1]], dtype=np.float32)

    # --- helpers ---

    def _route(self, world: int):
        episode = self.worlds[world].episode
        return self.town.route(episode.route_kind, episode.route_id).data

    def _require_episodes(self, ids: Sequence[int] | None = None) -> None:
        ids = range(self.num_worlds) if ids is None else ids
        missing = [w for w in ids if self.worlds[w].episode is None]
        if missing:
            raise BackendError(f"worlds {missing} hold no episode: call reset(seed) (or restore a snapshot) first")

    def _check_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.backend != self.backend_name or snapshot.signature != self.signature:
            raise BackendError(
                f"snapshot from backend {snapshot.backend!r} with signature {snapshot.signature} does not fit this "
                f"CARLA backend (signature {self.signature}): it was taken with another town, CARLA version, step, "
                "traffic slots, light control or route settings; restore it into a backend with the same env config")


def import_world_class(path: str) -> Callable:
    """The class named by ``env.world_class`` ("module:Class")."""
    import importlib

    module_name, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise BackendError(f"env.world_class={path!r} cannot be imported ({error}); give 'module:Class', e.g. "
                           "envs.carla.world:CarlaWorld") from error


def _file_digest(path: str) -> str:
    from pathlib import Path

    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]


# --- drift -----------------------------------------------------------------------------------------------------

@dataclass
class DriftReport:
    """Actor positions over k replayed steps (metres, CARLA x, y): ``source`` [k, A, 2] from the source world,
    ``restored`` and ``repeat`` from two restores of its snapshot; ``keys`` name the A actors (ego first).
    Actors missing at a step are NaN."""

    keys: list[str]
    source: np.ndarray
    restored: np.ndarray
    repeat: np.ndarray

    @property
    def vs_source(self) -> np.ndarray:
        """[k, A] metres between the restored world's actors and the source's."""
        return np.linalg.norm(self.restored - self.source, axis=-1)

    @property
    def between_restores(self) -> np.ndarray:
        """[k, A] metres between two restores of one snapshot: the spread of a GRPO group's branches that is
        not the policy's doing."""
        return np.linalg.norm(self.repeat - self.restored, axis=-1)

    def summary(self) -> dict[str, float]:
        """Drift at the last step: the ego's, and the mean and max over the other actors present."""
        out = {}
        for name, drift in (("drift_vs_source", self.vs_source), ("drift_between_restores", self.between_restores)):
            last = drift[-1]
            others = last[1:][np.isfinite(last[1:])]
            out[f"{name}/ego_m"] = float(last[0]) if np.isfinite(last[0]) else float("nan")
            out[f"{name}/actors_mean_m"] = float(others.mean()) if len(others) else 0.0
            out[f"{name}/actors_max_m"] = float(others.max()) if len(others) else 0.0
        return out


def actor_positions(actors: ActorStates) -> np.ndarray:
    """[A, 2] CARLA x, y of every vehicle slot then every walker slot; NaN where the slot is empty."""
    vehicles = np.where(actors.vehicle_valid[:, None], actors.vehicle_pose[:, :2], np.nan)
    walkers = np.where(actors.walker_valid[:, None], actors.walker_pose[:, :2], np.nan)
    return np.concatenate([vehicles, walkers])


def measure_drift(backend: CarlaBackend, world: int, actions, *, snapshot: Snapshot | None = None,
                  from_source: bool = False) -> DriftReport:
    """Replay ``actions`` [k, 3] (the ego's controls) from a snapshot of ``world`` and measure how far every
    actor drifts. Only that world is stepped.

    Without ``snapshot``: the world's current state is captured and its own continuation is the source. With
    one: ``from_source=True`` says the world still holds exactly that state (it was just taken), otherwise the
    snapshot is restored first and that restore is the source. Then the snapshot is restored and the actions
    replayed twice (``restored``, ``repeat``). The world is left restored to the snapshot."""
    actions = np.clip(np.asarray(actions, dtype=np.float64).reshape(-1, 3), ACTION_LOW, ACTION_HIGH)
    if snapshot is None:
        snapshot, from_source = backend.capture([world]), True
    backend._check_snapshot(snapshot)
    ((actors, episode),) = unpack_snapshot(snapshot.select([0]))

    def run(call) -> None:
        backend._run([world], lambda w: call(backend.worlds[w]))

    def restore() -> None:
        run(lambda target: target.restore(actors, episode))

    def play() -> np.ndarray:
        positions = []
        for action in actions:
            run(lambda target, action=action: target.step(action))
            positions.append(actor_positions(backend.worlds[world].actors))
        return np.stack(positions)

    if not from_source:
        restore()
    source = play()
    restore()
    restored = play()
    restore()
    repeat = play()
    restore()
    keys = vehicle_keys(len(actors.vehicle_valid) - 1) + walker_keys(len(actors.walker_valid))
    return DriftReport(keys, source, restored, repeat)


__all__ = ["CarlaBackend", "DriftReport", "EpisodeState", "measure_drift", "actor_positions"]
