"""The service side: executes contract calls on a backend, with transport-friendly arguments and results.

Tensors cross the process boundary as numpy arrays and snapshots as ``Snapshot.to_bytes()``, so a service
never unpickles code it received from a snapshot. Used by process workers and Ray actors alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from envs.api import Snapshot


def result_to_wire(result) -> dict[str, Any]:
    return {"observation": result.observation.cpu().numpy(), "reward": result.reward.cpu().numpy(),
            "terminated": result.terminated.cpu().numpy(), "truncated": result.truncated.cpu().numpy(),
            "info": {k: v.cpu().numpy() for k, v in result.info.items()}}


class ServiceHost:
    """Owns one backend built from a flat env config; ``handle(method, *args)`` runs one call."""

    def __init__(self, env_config: dict[str, Any], num_worlds: int, threads: int = 1):
        from envs.backends import build_local_backend, env_config_from_dict

        torch.set_num_threads(threads)
        config = env_config_from_dict({**env_config, "num_services": 1, "launcher": "local"})
        self.backend = build_local_backend(config, num_worlds=num_worlds)

    def describe(self) -> dict[str, Any]:
        """What the parent needs to know: world count, observation size, the backend's spec (what it is and which
        optional calls it offers), and the process groups of servers this service launched (a CARLA service), so
        the parent can stop them if the service dies. ``action_bounds`` (a Box backend's (low, high), else None)
        repeats the spec's bounds for clients that predate the spec."""
        spec = self.backend.spec
        return {"num_worlds": self.backend.num_worlds, "observation_size": self.backend.observation_size,
                "spec": spec.to_dict(),
                "action_bounds": None if spec.driving else [list(spec.action_low), list(spec.action_high)],
                "process_groups": self._process_groups()}

    def _process_groups(self) -> list[int]:
        groups = getattr(self.backend, "process_groups", None)  # CARLA's launched servers; a services detail
        return [] if groups is None else [int(g) for g in groups()]

    def close(self) -> None:
        """Close the backend (a CARLA backend stops the servers it launched)."""
        self.backend.close()

    def handle(self, method: str, *args):
        backend = self.backend
        if method == "ping":
            return "pong"
        if method == "reset":
            seeds, ids = args
            return backend.reset(seeds, ids).cpu().numpy()
        if method == "step":
            (actions,) = args
            return result_to_wire(backend.step(torch.as_tensor(actions, device=backend.device)))
        if method == "observe":
            (ids,) = args
            return backend.observe(ids).cpu().numpy()
        if method == "observe_raster":  # uint8 [len(ids), C, S, S]; only where describe() says it renders them
            (ids,) = args
            return backend.observe_raster(ids).cpu().numpy()
        if method == "snapshot":
            (ids,) = args
            return backend.snapshot(ids).to_bytes()
        if method == "restore":
            data, ids = args
            return backend.restore(Snapshot.from_bytes(data), ids).cpu().numpy()
        if method == "clone":
            src, dst = args
            backend.clone(src, dst)
            return None
        if method == "process_groups":  # servers this service launched now (a restart inside it changes them)
            return self._process_groups()
        if method == "metrics":  # numbers for the training log (server restarts, restore errors)
            return {k: float(v) for k, v in backend.metrics().items()}
        # the optional calls the backend's spec offers (BackendBase raises NotOffered for the others)
        if method == "observe_raster":
            (ids,) = args
            return backend.observe_raster(ids).cpu().numpy()
        if method == "set_split":  # later resets draw train or eval routes (CARLA)
            (split,) = args
            return backend.set_split(split)
        raise ValueError(f"unknown service method {method!r}")


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))  # copies only read-only (Ray) arrays
