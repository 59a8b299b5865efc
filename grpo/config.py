"""Typed configuration of a training run. Every field is documented where it is defined; the YAML under
conf/ holds the values. Impossible combinations are rejected in ``__post_init__`` with a fix-it message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.factory import EnvConfig, env_config_from_dict
from envs.typed_config import ConfigError, from_dict, to_dict
from grpo.advantages import Scaling, ZeroStdGroups
from grpo.distributions import ACTION_DIM
from grpo.loss import Aggregation, KLEstimator, LossConfig, RatioLevel
from grpo.policy import PolicyConfig
from grpo.pretrain import PretrainConfig

MAX_BRANCHES = 1 << 20
"""Branches per iteration (num_trunks x group_size) above which the rollout's buffers cannot fit: each branch
keeps about 50 kB of observations per 100 steps, so a million branches already need 50 GB."""


@dataclass(frozen=True)
class GRPOConfig:
    """The GRPO algorithm: branching, advantages, loss and optimisation.

    Defaults follow DeepSeekMath GRPO (group normalisation, clip 0.2, per-step ratio, a KL penalty to the
    reference), with the KL (0.2) and learning rate (1e-4) that fine-tune the warm start's clone of the expert
    without losing it; ``conf/grpo/{grpo,dr_grpo,dapo}.yaml`` are the named presets.
    """

    iterations: int = 2000  # training iterations (one rollout + one update each)
    num_trunks: int = 16  # T: episodes advanced in parallel; each branches once per iteration
    group_size: int = 8  # G: branches restored from one snapshot (DeepSeekMath used 64 samples per prompt)
    branch_horizon: int = 100  # H: steps each branch is driven (100 x 0.1 s = 10 s)
    train_steps: int | None = None  # k: train on each branch's first k steps (1 = single actions scored by
    # their branch's return, the mission's literal form); None = the whole horizon
    trunk_steps: int = 0  # single-mode steps the trunk drives between branch points (not trained on)
    selection: Literal["best", "random", "softmax"] = "softmax"  # which branch each trunk continues from
    selection_temperature: float = 1.0  # softmax over group-normalised returns / temperature
    discount: float = 1.0  # gamma for the branch return sum_h gamma^h r_h
    advantage_scaling: Scaling = "group"  # group: (R-mean)/(std+eps); batch: batch std; none: Dr. GRPO
    zero_std_groups: ZeroStdGroups = "keep"  # groups whose returns are all equal: keep (advantage 0) or drop
    std_floor: float = 1e-6  # lower bound of the std used for scaling
    num_epochs: int = 2  # mu: passes over each iteration's samples
    num_minibatches: int = 4  # minibatches per pass; they hold whole branches
    learning_rate: float = 1e-4  # Adam
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay over ``iterations``
    warmup_iterations: int = 0  # linear learning-rate warm-up
    adam_eps: float = 1e-5  # as in CleanRL's PPO
    max_grad_norm: float = 1.0  # global gradient-norm clip
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.2  # ratio clipped above at 1 + clip_high (DAPO's clip-higher: 0.28)
    beta: float = 0.2  # KL-to-reference coefficient: to the clone of the expert (DeepSeekMath: 0.04; DAPO: 0)
    kl_estimator: KLEstimator = "k3"  # k3 sample estimator, or the analytic Beta KL
    entropy_coef: float = 0.0  # entropy bonus weight
    aggregation: Aggregation = "step_mean"  # step_mean (DAPO token-mean), branch_mean (GRPO), dr_grpo
    ratio_level: RatioLevel = "step"  # step (PPO/GRPO) or branch (GSPO sequence-level ratio)
    reference: Literal["frozen", "sync", "none"] = "frozen"  # frozen initial policy, synced copy, or none
    reference_sync_every: int = 100  # iterations between reference syncs when reference == "sync"

    def __post_init__(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        need(self.group_size >= 2, f"grpo.group_size must be >= 2 (GRPO compares branches of one snapshot), "
                                   f"got {self.group_size}")
        need(self.num_trunks >= 1, f"grpo.num_trunks must be >= 1, got {self.num_trunks}")
        need(self.num_trunks * self.group_size <= MAX_BRANCHES,
             f"grpo.num_trunks x grpo.group_size = {self.num_trunks * self.group_size:,} branches per iteration; at "
             f"most {MAX_BRANCHES:,} fit in memory (experiment=gpu runs 65,536 on one GPU): lower grpo.num_trunks")
        need(self.iterations >= 1, f"grpo.iterations must be >= 1, got {self.iterations}")
        need(self.branch_horizon >= 1, f"grpo.branch_horizon must be >= 1, got {self.branch_horizon}")
        need(self.train_steps is None or 1 <= self.train_steps <= self.branch_horizon,
             f"grpo.train_steps must be null or in [1, branch_horizon={self.branch_horizon}], got {self.train_steps}")
        need(self.trunk_steps >= 0, f"grpo.trunk_steps must be >= 0, got {self.trunk_steps}")
        need(self.selection_temperature > 0, "grpo.selection_temperature must be > 0")
        need(0 < self.discount <= 1, f"grpo.discount must be in (0, 1], got {self.discount}")
        need(self.num_epochs >= 1, f"grpo.num_epochs must be >= 1, got {self.num_epochs}")
        num_branches = self.num_trunks * self.group_size
        need(1 <= self.num_minibatches <= num_branches,
             f"grpo.num_minibatches must be in [1, num_trunks * group_size = {num_branches}] (minibatches hold "
             f"whole branches), got {self.num_minibatches}")
        need(num_branches % self.num_minibatches == 0,
             f"num_trunks * group_size = {num_branches} branches must divide evenly into grpo.num_minibatches="
             f"{self.num_minibatches}; pick a divisor")
        need(self.learning_rate > 0, "grpo.learning_rate must be > 0")
        need(self.max_grad_norm > 0, "grpo.max_grad_norm must be > 0")
        need(self.beta == 0 or self.reference != "none",
             f"grpo.beta={self.beta} needs a reference policy: set grpo.reference=frozen or sync, or beta=0")
        need(self.reference_sync_every >= 1, "grpo.reference_sync_every must be >= 1")
        self.loss_config()  # validates the loss fields with their own messages

    @property
    def trained_steps(self) -> int:
        return self.branch_horizon if self.train_steps is None else self.train_steps

    def loss_config(self, decisions: int | None = None) -> LossConfig:
        """The loss options; ``decisions`` is the number of trained decisions per branch (Dr. GRPO's constant
        normaliser), the trained steps when every step is one."""
        return LossConfig(clip_low=self.clip_low, clip_high=self.clip_high, beta=self.beta,
                          kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef,
                          aggregation=self.aggregation, ratio_level=self.ratio_level,
                          dr_grpo_normalizer=float(decisions or self.trained_steps))


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] = "online"  # online falls back to offline by itself
    # when there is no API key or no network
    project: str = "grpo-drive"
    entity: str | None = None
    init_timeout_s: float = 30.0  # give up on the server after this long and log offline


@dataclass(frozen=True)
class LoggerConfig:
    log_dir: str = "runs"  # TensorBoard event files go to <log_dir>/<run_name>
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every: int = 1  # iterations between metric writes
    picture_every: int = 50  # iterations between group pictures (G branches on one bird's-eye image); 0 = off
    progress_bar: bool = True


@dataclass(frozen=True)
class EvalConfig:
    every: int = 100  # iterations between periodic evaluations (0 = never); best.pt follows their score
    num_routes: int = 32  # held-out evaluation routes (episode seeds eval_seed .. eval_seed + n - 1)
    seed: int = 0  # first evaluation episode seed (routes come from the held-out towns)
    deterministic: bool = True  # drive the policy's mode instead of sampling
    max_steps: int | None = None  # cap on steps per route (default: the backend's episode limit)
    device: str | None = None  # device of the evaluation simulator (default: env.device)

    def __post_init__(self) -> None:
        if self.every < 0 or self.num_routes < 1:
            raise ValueError(f"eval.every must be >= 0 and eval.num_routes >= 1, got {self.every}, {self.num_routes}")


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = "checkpoints"  # checkpoints go to <dir>/<run_name>/{last,best,iter_NNNNNN}.pt
    every: int = 50  # iterations between periodic checkpoints (last.pt is rewritten each time too)
    keep_last: int = 3  # periodic checkpoints kept; older ones are deleted (last.pt and best.pt stay)

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 0:
            raise ValueError(f"checkpoint.every must be >= 1 and keep_last >= 0, got {self.every}, {self.keep_last}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole run; :func:`train_config_from_dict` builds it from the composed Hydra config."""

    seed: int = 0  # master seed: worlds, policy initialisation, sampling and minibatch order derive from it
    device: str = "cpu"  # device of the policy and the update
    run_name: str = "run"  # names the checkpoint and log folders
    resume: str | None = None  # null, "auto" (this run's last.pt, else the newest run's) or a checkpoint path
    deterministic: bool = False  # torch deterministic algorithms; a resumed run then logs the same metrics
    num_threads: int | None = None  # torch CPU threads; None = torch's default (one per core). Small policies
    # gain nothing from more than 1, and on a shared CPU extra threads wait on each other (experiment=gym_control
    # on the 2-core CI box: 30 iterations in 77 s with 2 threads, 8 s with 1)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (torch CPU threads) or null for torch's default, "
                             f"got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, resolved form (stored in checkpoints and logged); ``train_config_from_dict`` reads it."""
        out = {f: to_dict(getattr(self, f)) for f in ("seed", "device", "run_name", "resume", "deterministic",
                                                       "num_threads", "policy", "grpo", "pretrain", "logger", "eval",
                                                       "checkpoint")}
        out["env"] = self.env.to_flat_dict()
        return out


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Typed config from the composed Hydra config (as a plain dict); ConfigError names a bad key."""
    data = dict(data)
    env = env_config_from_dict(data.pop("env", {}))
    data.pop("experiment", None)  # the experiment group only overrides other groups
    config = dataclasses.replace(from_dict(TrainConfig, data), env=env)
    episode_limit = getattr(env.backend_config, "max_episode_steps", None)
    if episode_limit is not None and config.grpo.branch_horizon >= episode_limit:
        raise ConfigError(f"grpo.branch_horizon={config.grpo.branch_horizon} must be shorter than the episode limit "
                          f"env.max_episode_steps={episode_limit}")
    repeat = config.policy.action_repeat
    if env.backend == "gym" and isinstance(repeat, tuple):
        raise ConfigError(f"policy.action_repeat={list(repeat)} lists the driving actions [acceleration, steer]; "
                          f"with env=gym give one int for every action dimension, e.g. policy.action_repeat=1")
    if isinstance(repeat, tuple) and len(repeat) != ACTION_DIM:
        raise ConfigError(f"policy.action_repeat={list(repeat)} needs one entry per action dimension "
                          f"[acceleration, steer], or one int for both")
    return config
