"""Checkers for the contract, runnable on any backend (ours, or one a user writes).

    from envs.contract import check_capabilities, check_snapshot_contract
    check_snapshot_contract(lambda: MyBackend(num_worlds=4), seed=0)
    check_capabilities(MyBackend(num_worlds=4))

They raise ``ContractError`` naming the first broken promise. With ``atol=0`` (the built-in simulator) the
replays must be bit-identical; a backend that restores only approximately (CARLA) passes a tolerance.
:func:`check_capabilities` checks that a backend's ``spec`` tells the truth: every optional call it declares
answers in the documented form, and every other one raises NotOffered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from envs.api import ACTION_SIZE, RESTARTS_METRIC, Backend, BackendSpec, MapView, NotOffered, Snapshot


class ContractError(AssertionError):
    """A backend broke a promise of the snapshot contract."""


def random_actions(num_worlds: int, steps: int, seed: int, bounds=None) -> torch.Tensor:
    """Reproducible actions [steps, num_worlds, k]: mostly-forward driving controls (k = 3), or uniform in the
    Box ``bounds`` = (low, high) of a backend that is not a driving one (its spec's action bounds)."""
    generator = torch.Generator().manual_seed(seed)
    if bounds is not None:
        low, high = (torch.as_tensor(b, dtype=torch.float32) for b in bounds)
        return low + torch.rand(steps, num_worlds, len(low), generator=generator) * (high - low)
    actions = torch.rand(steps, num_worlds, ACTION_SIZE, generator=generator)
    actions[..., 1] *= 0.3  # brake lightly so worlds keep moving
    actions[..., 2] = (actions[..., 2] - 0.5) * 0.4  # steer in [-0.2, 0.2]
    return actions


def _rollout(backend: Backend, actions: torch.Tensor, ids: torch.Tensor):
    """Step the whole batch with ``actions`` and keep the trajectory of worlds ``ids``."""
    observations, rewards, dones = [], [], []
    for step_actions in actions:
        result = backend.step(step_actions)
        observations.append(result.observation[ids].cpu())
        rewards.append(result.reward[ids].cpu())
        dones.append((result.terminated | result.truncated)[ids].cpu())
    return torch.stack(observations), torch.stack(rewards), torch.stack(dones)


def _expect_equal(what: str, name: str, expected: torch.Tensor, actual: torch.Tensor, atol: float) -> None:
    if atol == 0 or expected.dtype == torch.bool:
        same = torch.equal(expected, actual)
    else:
        same = torch.allclose(expected, actual, atol=atol)
    if not same:
        diff = (expected.float() - actual.float()).abs().max().item()
        raise ContractError(f"{what}: {name} differ (max abs difference {diff:.3g}, tolerance {atol})")


def _expect_same(what: str, expected, actual, atol: float) -> None:
    for name, a, b in zip(("observations", "rewards", "done flags"), expected, actual, strict=True):
        _expect_equal(what, name, a, b, atol)


def check_snapshot_contract(make_backend: Callable[[], Backend], *, seed: int = 0, warmup_steps: int = 10,
                            replay_steps: int = 20, atol: float = 0.0) -> None:
    """Check reset determinism, replay after restore, restore twice, restore into other worlds, restore into
    a fresh backend, serialisation, and clone. Needs a backend with at least 4 worlds."""
    backend = make_backend()
    num_worlds = backend.num_worlds
    if num_worlds < 4:
        raise ContractError(f"the contract check needs >= 4 worlds, got {num_worlds}")
    half = num_worlds // 2
    first, second = torch.arange(half), torch.arange(half, 2 * half)
    spec = backend.spec
    bounds = None if spec.driving else (spec.action_low, spec.action_high)
    warmup = random_actions(num_worlds, warmup_steps, seed + 1, bounds)
    replay = random_actions(num_worlds, replay_steps, seed + 2, bounds)
    # The second half replays the first half's actions, so its trajectories can be compared with them.
    replay[:, second] = replay[:, first]

    obs_a = backend.reset(seed)
    twin = make_backend()
    try:
        obs_b = twin.reset(seed)
    finally:
        twin.close()
    _expect_equal("reset with the same seed", "observations", obs_a.cpu(), obs_b.cpu(), atol)

    _rollout(backend, warmup, first)
    snapshot = backend.snapshot(first)
    reference = _rollout(backend, replay, first)

    backend.restore(snapshot, first)
    _expect_same("replay after restore", reference, _rollout(backend, replay, first), atol)
    backend.restore(snapshot, first)
    _expect_same("replay after restoring the same snapshot twice", reference,
                 _rollout(backend, replay, first), atol)
    backend.restore(snapshot, second)
    _expect_same("replay after restoring into other world ids", reference,
                 _rollout(backend, replay, second), atol)

    restored = Snapshot.from_bytes(snapshot.to_bytes())
    fresh = make_backend()
    fresh.reset(seed + 100)
    fresh.restore(restored, first)
    _expect_same("replay in a fresh backend after a bytes round trip", reference,
                 _rollout(fresh, replay, first), atol)

    backend.restore(snapshot, first)
    backend.clone(first, second)
    _expect_same("replay after clone", reference, _rollout(backend, replay, second), atol)
    backend.close()
    fresh.close()


def check_capabilities(backend: Backend, *, seed: int = 0) -> None:
    """Check the backend's ``spec`` against what it does (see the module docstring). Resets the backend."""
    spec = backend.spec
    if not isinstance(spec, BackendSpec):
        raise ContractError(f"spec must be an envs.api.BackendSpec, got {type(spec).__name__}")
    backend.reset(seed)
    bounds = None if spec.driving else (spec.action_low, spec.action_high)
    backend.step(random_actions(backend.num_worlds, 1, seed, bounds)[0].to(backend.device))  # spec.action_size fits
    metrics = backend.metrics()
    if RESTARTS_METRIC not in metrics or not all(isinstance(v, float) for v in metrics.values()):
        raise ContractError(f"metrics() must map names to floats and hold {RESTARTS_METRIC!r}, got {metrics}")
    one = [backend.num_worlds - 1]
    calls = {
        "rasters": [("observe_raster", lambda: backend.observe_raster(one),
                     lambda out: out.dtype == torch.uint8 and out.dim() == 4 and len(out) == 1)],
        "pictures": [("positions", lambda: backend.positions(one),
                      lambda out: out.dtype == torch.float32 and tuple(out.shape) == (1, 2)),
                     ("render_birdseye", lambda: backend.render_birdseye(one[0], size=32, metres=30.0),
                      lambda out: out.dtype.name == "uint8" and out.shape == (32, 32, 3)),
                     ("route_map", lambda: backend.route_map(one[0]),
                      lambda out: isinstance(out, MapView) and out.image.ndim == 3 and out.route.shape[1] == 2)],
        "splits": [("set_split", lambda: backend.set_split(backend.set_split("eval")),
                    lambda out: out == "eval")],
    }
    for flag, checks in calls.items():
        for name, call, fits in checks:
            if getattr(spec, flag):
                if not fits(call()):
                    raise ContractError(f"{name}() answers in another form than envs.api.BackendBase documents")
                continue
            try:
                call()
            except NotOffered:
                continue
            raise ContractError(f"{name}() answered, but the spec says {flag}=False: declare it, or leave the call to "
                                "BackendBase (which raises NotOffered)")
