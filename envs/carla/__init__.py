"""The CARLA backend: ``python train.py env=carla env.num_services=4``.

One CARLA server hosts one world (one ego), so ``env.num_services`` servers give that many worlds, and the
GRPO rollout runs the branches of a group in waves over them. The modules:

* :mod:`envs.carla.config` -- :class:`CarlaConfig`, the typed ``env`` section (imports without ``carla``).
* :mod:`envs.carla.server` -- launching CarlaUE4 servers by process group, port allocation, health checks.
* :mod:`envs.carla.gpus` -- CUDA device ids (``env.gpus``) -> graphics adapters (``-graphicsadapter``) by PCI bus id.
* :mod:`envs.carla.routes` -- route planning on ``carla.Map.get_topology()`` and leaderboard route XML.
* :mod:`envs.carla.lights` -- traffic lights: stop lines from trigger volumes, the backend-driven schedule.
* :mod:`envs.carla.state` -- actor and episode state as plain arrays: snapshots, observations, infractions.
* :mod:`envs.carla.raster` -- the simulator's bird's-eye raster drawn from the map and the world state.
* :mod:`envs.carla.world` -- one server's world: spawning, stepping, capturing and restoring it.
* :mod:`envs.carla.backend` -- :class:`~envs.carla.backend.CarlaBackend` (the :mod:`envs.api` contract, one
  server per process) and :func:`~envs.carla.backend.measure_drift` (against the source, on one server).
* :mod:`envs.carla.drift` -- :func:`~envs.carla.drift.measure_server_drift`: one snapshot replayed on several
  servers, through the contract (what :mod:`envs.services.carla_servers` logs as ``drift/*``).

Only ``world``, ``backend`` and parts of ``routes`` / ``lights`` / ``server`` need the ``carla`` package, and
they import it inside functions, so configs parse on machines without it.
"""
