"""What ``evaluate.py`` does: rebuild a policy and its environment from a checkpoint alone, drive it and the
baselines on the same held-out routes (:func:`evaluate_checkpoint`), and turn evaluate.py's composed config and
command-line overrides into a typed :class:`EvaluateConfig` (only the env keys the user named override the
checkpoint's env; ``env=<name>`` replaces it). Plain strings and dicts: Hydra stays in evaluate.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from envs.api import Backend
from envs.factory import EnvConfig, ServiceConfig, env_config_from_dict
from envs.typed_config import ConfigError, from_dict, to_dict
from grpo.checkpoint import CheckpointError, load_checkpoint
from grpo.config import EvalConfig
from grpo.distributions import action_mapping_for
from grpo.evaluation import EvalResult, build_eval_backend, eval_env_config, evaluate_policy
from grpo.policy import PolicyConfig, build_policy

Baseline = Literal["expert", "random"]


@dataclass(frozen=True)
class EvalReportConfig:
    """The keys of evaluate.py's ``eval`` section beyond the route suite (which is the trainer's EvalConfig)."""

    baselines: tuple[Baseline, ...] = ("expert", "random")  # reference drivers evaluated on the same routes
    output_dir: str | None = None  # results folder; null = <checkpoint folder>/eval_<checkpoint stem>
    num_gifs: int = 2  # GIFs of the policy on the first routes of the suite (built-in simulator)
    num_maps: int = 4  # routes whose trajectories (policy and baselines) are drawn on the town map
    log_run: bool = False  # also log to the checkpoint run's TensorBoard folder (and wandb if it used wandb)

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"eval.baselines lists a driver twice: {list(self.baselines)}")
        if self.num_gifs < 0 or self.num_maps < 0:
            raise ValueError(f"eval.num_gifs and eval.num_maps must be >= 0, got {self.num_gifs}, {self.num_maps}")


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``evaluate.py`` does; :func:`evaluate_config_from_dict` builds it from the composed config."""

    checkpoint: str  # path to a checkpoint written by the trainer (last.pt, best.pt, iter_NNNNNN.pt)
    device: str = "cpu"  # device of the policy
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(num_routes=64, seed=1000))
    report: EvalReportConfig = field(default_factory=EvalReportConfig)
    env_overrides: dict[str, Any] = field(default_factory=dict)  # nested env keys the user set on top of the
    # checkpoint's env (or the whole env when replace_env)
    replace_env: bool = False  # `env=<name>` was given: use the composed env instead of the checkpoint's

    def output_dir(self) -> str:
        if self.report.output_dir is not None:
            return self.report.output_dir
        path = Path(self.checkpoint)
        return str(path.parent / f"eval_{path.stem}")


def evaluate_config_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> EvaluateConfig:
    """Typed config from evaluate.py's composed config (a plain dict) and its command-line ``overrides``
    (Hydra's ``overrides.task``): only the env keys the user named override the checkpoint's env; ``env=<name>``
    replaces it. ConfigError names a bad key."""
    data = dict(data)
    data.pop("hydra", None)
    composed_env = data.pop("env", {}) or {}
    section = dict(data.pop("eval", {}) or {})
    suite_keys = {f.name for f in dataclasses.fields(EvalConfig)}
    suite = from_dict(EvalConfig, {k: v for k, v in section.items() if k in suite_keys}, "eval")
    report = from_dict(EvalReportConfig, {k: v for k, v in section.items() if k not in suite_keys}, "eval")
    replace_env, keys = _env_override_keys(overrides)
    if replace_env:
        env_overrides = composed_env
    else:
        env_overrides = {}
        for key in keys:
            value = _lookup(composed_env, key)
            if value is not _MISSING:
                _assign(env_overrides, key, value)
    config = from_dict(EvaluateConfig, {**data, "eval": suite, "report": report})
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={config.device} but torch sees no CUDA device; use device=cpu")
    return dataclasses.replace(config, env_overrides=env_overrides, replace_env=replace_env)


def env_for_evaluation(checkpoint_env: dict[str, Any], config: EvaluateConfig, path: str = "checkpoint") -> EnvConfig:
    """The checkpoint's env (or the composed one with ``env=<name>``), with the user's env keys on top.
    CheckpointError when the stored env does not fit this version; ConfigError when the user's keys are wrong."""
    if not config.replace_env:
        try:
            env_config_from_dict(checkpoint_env)
        except ConfigError as error:
            raise CheckpointError(f"{path}: its env config does not fit this version ({error}); evaluate it on "
                                  "another env with env=<name>") from error
    base = {} if config.replace_env else checkpoint_env
    return env_config_from_dict(_merge(base, config.env_overrides))


@dataclass
class Evaluation:
    """The results of :func:`evaluate_checkpoint` and what they were computed from."""

    results: dict[str, EvalResult]  # driver name ("policy", "expert", "random") -> its result
    checkpoint: str
    iteration: int
    run_name: str
    env: EnvConfig
    suite: EvalConfig
    train_config: dict[str, Any]  # the run's resolved config as stored in the checkpoint
    notices: list[str] = field(default_factory=list)  # things the reader should know (printed by evaluate.py)

    def context(self) -> dict[str, Any]:
        """What the results were computed on, for the report's header and summary.json."""
        suite, backend_config = self.suite, self.env.backend_config
        details = [f"{key}={getattr(backend_config, key)}" for key in ("map", "num_towns", "max_episode_steps")
                   if hasattr(backend_config, key)]
        last_seed = suite.seed + suite.num_routes - 1
        driven = "policy " + ("mode" if suite.deterministic else "sampled")
        if self.env.backend == "gym":  # episodes of a gymnasium env: no routes, no towns
            routes = f"{suite.num_routes} evaluation episodes (episode seeds {suite.seed}..{last_seed}), {driven}"
            env = f"gym {backend_config.id}, evaluation seeds ({', '.join(details)})"
        else:
            routes = f"{suite.num_routes} held-out routes (episode seeds {suite.seed}..{last_seed}), {driven}"
            env = f"{self.env.backend}, evaluation towns ({', '.join(details)})"
        return {"checkpoint": self.checkpoint, "iteration": self.iteration, "run_name": self.run_name,
                "routes": routes, "env": env,
                "suite": {k: v for k, v in to_dict(suite).items() if k != "every"},
                "env_config": self.env.to_flat_dict()}


def evaluate_checkpoint(config: EvaluateConfig) -> Evaluation:
    """Rebuild the policy and its environment from ``config.checkpoint``, then drive it and the baselines on
    the same held-out routes. CheckpointError for a missing, unreadable or incompatible checkpoint."""
    from grpo.baselines import build_baseline

    state = load_checkpoint(config.checkpoint, map_location="cpu")
    stored = state.get("config")
    if not isinstance(stored, dict) or not {"env", "policy"} <= stored.keys() or "policy" not in state:
        raise CheckpointError(f"{config.checkpoint} holds no policy and run config; was it written by the trainer?")
    env_config = eval_env_config(env_for_evaluation(stored["env"], config, config.checkpoint), config.eval)
    try:
        # Checkpoints from before held actions (no action_repeat key) acted every step, and those from before
        # the obstacle inputs (no obstacle_features key) read the observation alone.
        policy_config = from_dict(PolicyConfig, {"action_repeat": 1, "obstacle_features": False, **stored["policy"]},
                                  "policy")
    except ConfigError as error:
        raise CheckpointError(f"{config.checkpoint}: its policy config does not fit this version ({error})") from error
    backend = build_eval_backend(env_config, config.eval)
    notices = _missing_env_keys(stored["env"], config)
    try:
        actions = action_mapping_for(backend)
        policy = _policy_from_state(state, policy_config, backend, config.checkpoint)
        policy = policy.to(config.device).eval()
        report = config.report
        results = {"policy": evaluate_policy(policy, env_config, config.eval, config.device, backend,
                                             num_gifs=report.num_gifs, num_maps=report.num_maps)}
        for name in report.baselines:
            if name == "expert" and actions.kind != "driving":  # env=gym: there is no expert to compare with
                notices.append(f"note: no expert baseline on {env_config.backend} (the expert drives only driving "
                               "backends)")
                continue
            results[name] = evaluate_policy(build_baseline(name, actions), env_config, config.eval, config.device,
                                            backend, num_maps=report.num_maps)
    finally:
        backend.close()
    return Evaluation(results, config.checkpoint, int(state.get("iteration", 0)), str(stored.get("run_name", "")),
                      env_config, config.eval, stored, notices)


def _missing_env_keys(checkpoint_env: dict[str, Any], config: EvaluateConfig) -> list[str]:
    """A notice when the checkpoint's env predates keys of this version: they take today's defaults, so the
    evaluation world may differ from the training one (e.g. traffic added since)."""
    if config.replace_env:
        return []
    current = env_config_from_dict({"backend": checkpoint_env.get("backend", "sim")}).to_flat_dict()
    services = {f.name for f in dataclasses.fields(ServiceConfig)}  # how worlds are hosted, not what they are
    missing = sorted(set(current) - set(checkpoint_env) - set(config.env_overrides) - services)
    if not missing:
        return []
    return [f"note: the checkpoint's env config has no {missing}; they take this version's defaults, so the "
            "evaluation world may differ from the training one (set them with env.<key>=...)"]


def _policy_from_state(state: dict[str, Any], policy_config: PolicyConfig, backend: Backend, path: str):
    """The checkpoint's policy, rebuilt as the trainer built it: for ``backend``'s observation size and through
    its action mapping (driving controls, or the Box bounds of an ``env=gym`` env), then its weights loaded."""
    size, observation_size = state.get("observation_size"), backend.observation_size
    if size != observation_size:
        raise CheckpointError(f"{path} was trained on observations of size {size}, but this environment gives "
                              f"{observation_size}; evaluate it on the environment it was trained on")
    try:
        policy = build_policy(int(size), policy_config, action_mapping_for(backend))
        policy.load_state_dict(state["policy"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the policy weights do not fit its policy config "
                              f"({str(error).splitlines()[0][:200]})") from error
    return policy


# --- env override plumbing (plain strings and dicts; Hydra stays in evaluate.py) -------------------------------

_MISSING = object()


def _env_override_keys(overrides: Sequence[str]) -> tuple[bool, list[str]]:
    """From command-line overrides such as ``env=sim``, ``env.town.grid_size=4`` or ``+env.x=1``: whether the
    env group was chosen, and the dotted keys under ``env`` that were set."""
    replace, keys = False, []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key == "env":
            replace = True
        elif key.startswith("env."):
            keys.append(key[len("env."):])
    return replace, keys


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
