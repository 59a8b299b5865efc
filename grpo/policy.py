"""Driving policies: an observation encoder and a Beta head over the 2-D raw action [acceleration, steer].

The head outputs four numbers per observation and maps them to concentrations ``alpha = 1 + softplus(x)``,
``beta = 1 + softplus(y)``: both exceed 1, so every action distribution is unimodal with zero density at the
bounds and a well-defined mode. The head's last layer is initialised orthogonally with gain 0.01 (CleanRL;
Andrychowicz et al. 2021, "What Matters in On-Policy Reinforcement Learning?") and zero bias, so the
initial policy is close to Beta(1 + ln 2, 1 + ln 2) ~ Beta(1.69, 1.69) in both dimensions: wide and centred
(no throttle or brake, straight steer on average), whatever the observation.

Driving policies can read one derived input besides the observation (``obstacle_features``, off by
default): what is in the ego's way, as the privileged expert reads it from the same observation
(envs.sim.expert). The observation lists the 8 nearest vehicles and 4 nearest pedestrians; which of them is in
the ego's path is a geometric question (project each onto the route, compare the offset with the corridor's
half-width) that an MLP learns slowly, and collisions with a car standing in the lane were what held the
learning curve down. The option gives the policy the answer as four inputs: the room before it should stand
behind the nearest vehicle or pedestrian in its way (the gap less a standstill gap of 3 m behind a vehicle,
4 m before a pedestrian; / 50), that obstacle's speed along the route (/ 10), pedestrian (1) or vehicle (0),
and valid; all zero when nothing is in the way. They are a function of the observation, so every backend
that fills the observation gives them; they are computed in the policy, not the simulator, so the
simulator's throughput does not pay for them.

There is no value head: GRPO's baseline is the group mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from envs.api import OBSERVATION_LAYOUT
from envs.sim.expert import FAR, ExpertDriver
from grpo.distributions import DRIVING_ACTIONS, ActionMapping, BetaActions

PolicyKind = Literal["mlp", "cnn"]
Activation = Literal["tanh", "relu", "elu"]

# Hidden layers: orthogonal init with gain sqrt(2), as CleanRL's layer_init; the head uses HEAD_GAIN.
HIDDEN_GAIN = math.sqrt(2.0)
HEAD_GAIN = 0.01
OBSTACLE_INPUTS = ("room", "speed", "pedestrian", "valid")


@dataclass(frozen=True)
class PolicyConfig:
    """Options of the policy network.

    Attributes:
        kind: ``"mlp"`` (default; observation vector only) or ``"cnn"`` (vector plus a bird's-eye-view
            raster through a small conv encoder).
        hidden_sizes: default (256, 256). Widths of the MLP layers (for ``"cnn"``, the MLP after the
            conv features are concatenated with the vector). Empty means a linear policy.
        activation: ``"tanh"`` (default, CleanRL's and "What Matters"' choice for continuous control),
            ``"relu"`` or ``"elu"``.
        raster_channels: default 6 (drivable area, lane markings, route, vehicles, pedestrians, lights).
            Channels C of the ``"cnn"`` raster [N, C, S, S].
        raster_size: default 64. Side S of the ``"cnn"`` raster in pixels; at least 8 (three stride-2 convs).
        conv_channels: default (32, 64, 64). Output channels of the three stride-2 convolutions.
        action_repeat: default (5, 1). Environment steps each sampled action is held for (frame skip), in
            training rollouts and in evaluation alike: one int for every action dimension, or one per raw
            dimension (driving: ``[acceleration, steer]``, e.g. ``[5, 1]`` holds the longitudinal command
            half a second and steers every step). A held dimension explores for longer than one step: a
            brake sampled and held for half a second slows the car, where independent per-step samples
            average out. Log-probabilities count each dimension at the steps it was sampled, so they stay
            exact.
        obstacle_features: default False. Append the obstacle in the ego's way (see the module docstring) to
            driving observations before the network. Ignored for observations that are not the driving
            layout (gymnasium tasks).
    """

    kind: PolicyKind = "mlp"
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: Activation = "tanh"
    raster_channels: int = 6
    raster_size: int = 64
    conv_channels: tuple[int, int, int] = (32, 64, 64)
    action_repeat: int | tuple[int, ...] = (5, 1)
    obstacle_features: bool = False

    def __post_init__(self) -> None:
        # Structured configs hand over lists; store tuples so the frozen config stays hashable.
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "conv_channels", tuple(self.conv_channels))
        if self.kind not in get_args(PolicyKind):
            raise ValueError(f"kind must be one of {get_args(PolicyKind)}; got {self.kind!r}")
        if self.activation not in get_args(Activation):
            raise ValueError(f"activation must be one of {get_args(Activation)}; got {self.activation!r}")
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(
                f"hidden_sizes must all be >= 1 (use () for a linear policy); got {self.hidden_sizes}"
            )
        if len(self.conv_channels) != 3 or any(channels < 1 for channels in self.conv_channels):
            raise ValueError(f"conv_channels must be three positive ints; got {self.conv_channels}")
        if isinstance(self.action_repeat, list):
            object.__setattr__(self, "action_repeat", tuple(self.action_repeat))
        repeats = self.action_repeat if isinstance(self.action_repeat, tuple) else (self.action_repeat,)
        if not repeats or any(repeat < 1 for repeat in repeats):
            raise ValueError(f"action_repeat must be an int >= 1 or a list of them, one per action dimension "
                             f"(1 = a new action every step); got {self.action_repeat}")
        if self.raster_channels < 1:
            raise ValueError(f"raster_channels must be >= 1; got {self.raster_channels}")
        if self.raster_size < 8:
            raise ValueError(
                f"raster_size must be >= 8 pixels so three stride-2 convolutions leave a feature map; "
                f"got {self.raster_size}"
            )


def _activation(name: Activation) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    elif name == "relu":
        return nn.ReLU()
    elif name == "elu":
        return nn.ELU()
    else:
        raise ValueError(f"activation must be one of 'tanh', 'relu', 'elu'; got {name!r}")


def _init(layer: nn.Linear | nn.Conv2d, gain: float) -> nn.Linear | nn.Conv2d:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_size: int, hidden_sizes: tuple[int, ...], activation: Activation) -> tuple[nn.Sequential, int]:
    """The hidden layers and their output width (``in_size`` when there are none)."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [_init(nn.Linear(in_size, size), HIDDEN_GAIN), _activation(activation)]
        in_size = size
    return nn.Sequential(*layers), in_size


class _BetaHead(nn.Module):
    """Features [N, F] -> BetaActions with alpha, beta = 1 + softplus(linear(features)) of shape [N, k]."""

    def __init__(self, in_size: int, action_dim: int) -> None:
        super().__init__()
        self.linear = _init(nn.Linear(in_size, 2 * action_dim), HEAD_GAIN)

    def forward(self, features: Tensor) -> BetaActions:
        alpha_logits, beta_logits = self.linear(features).chunk(2, dim=-1)
        return BetaActions(1.0 + F.softplus(alpha_logits), 1.0 + F.softplus(beta_logits))


def _act(
    actions: BetaActions, mapping: ActionMapping, deterministic: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The sampled (or modal) raw action, the backend action it maps to, and its log-probability."""
    raw = actions.mode() if deterministic else actions.sample(generator)
    return raw, mapping.to_env(raw), actions.log_prob(raw)


def _check_obs(obs: Tensor, obs_size: int) -> None:
    if obs.dim() != 2 or obs.shape[-1] != obs_size:
        raise ValueError(f"obs must have shape [N, {obs_size}]; got {tuple(obs.shape)}")


def obstacle_inputs(obs: Tensor, reader: ExpertDriver) -> Tensor:
    """[N, 4] the obstacle in the way of each observation's ego, as ``reader`` finds it: room / distance_scale,
    speed along the route / speed_scale, pedestrian, valid (all zero when nothing is in the way)."""
    layout = reader.layout
    room, speed, pedestrian = reader.obstacle_in_way(obs)
    valid = room < FAR
    shown = valid.to(obs.dtype)
    return torch.stack([torch.where(valid, room, 0.0) / layout.distance_scale, speed / layout.speed_scale * shown,
                        pedestrian.to(obs.dtype) * shown, shown], dim=-1)


class _BetaPolicy(nn.Module):
    """What every policy shares: ``encode(obs)``, the network's vector input (the observation, plus the
    obstacle inputs where they apply), ``forward(obs, raster) -> BetaActions`` and ``act``, which samples (or
    takes the mode) and maps raw actions to the backend's actions. Subclasses define ``distribution(inputs,
    raster)``; ``forward`` is ``distribution(encode(obs), raster)``, and the update encodes a batch once and
    calls ``distribution`` per minibatch."""

    def __init__(self, obs_size: int, config: PolicyConfig, actions: ActionMapping) -> None:
        super().__init__()
        if obs_size < 1:
            raise ValueError(f"obs_size must be >= 1; got {obs_size}")
        self.obs_size = obs_size
        self.config = config
        self.actions = actions
        driving = actions.kind == "driving" and obs_size == OBSERVATION_LAYOUT.size
        self.obstacle_reader = ExpertDriver() if config.obstacle_features and driving else None
        self.input_size = obs_size + (len(OBSTACLE_INPUTS) if self.obstacle_reader is not None else 0)
        repeat = config.action_repeat
        self._repeats = repeat if isinstance(repeat, tuple) else (repeat,) * actions.raw_dim
        if len(self._repeats) != actions.raw_dim:
            raise ValueError(f"action_repeat needs one entry per action dimension ({actions.raw_dim}); got {repeat}")

    def encode(self, obs: Tensor) -> Tensor:
        """The network's vector input [N, input_size] for observations [N, obs_size]."""
        _check_obs(obs, self.obs_size)
        if self.obstacle_reader is None:
            return obs
        return torch.cat([obs, obstacle_inputs(obs, self.obstacle_reader)], dim=-1)

    def forward(self, obs: Tensor, raster: Tensor | None = None) -> BetaActions:
        """The action distribution for observations [N, obs_size] (and rasters, for a CNN)."""
        return self.distribution(self.encode(obs), raster)

    @property
    def action_repeat(self) -> tuple[int, ...]:
        """Environment steps each raw action dimension is held for, one per dimension."""
        return self._repeats

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        raster: Tensor | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Raw actions [N, k], backend actions (controls [N, 3] when driving) and log-probabilities [N]; the
        mode if deterministic."""
        return _act(self(obs, raster), self.actions, deterministic, generator)


class MLPPolicy(_BetaPolicy):
    """Observation vector [N, obs_size] -> MLP -> Beta head.

    ``uses_raster`` is False: the trainer need not ask the environment for rasters; a raster passed anyway is
    ignored, so every policy can be called as ``policy(obs, raster)``.
    """

    uses_raster = False

    def __init__(self, obs_size: int, config: PolicyConfig, actions: ActionMapping = DRIVING_ACTIONS) -> None:
        super().__init__(obs_size, config, actions)
        self.trunk, features = _mlp(self.input_size, config.hidden_sizes, config.activation)
        self.head = _BetaHead(features, actions.raw_dim)

    def distribution(self, inputs: Tensor, raster: Tensor | None = None) -> BetaActions:
        """The action distribution for encoded inputs [N, input_size]."""
        return self.head(self.trunk(inputs))


class CNNPolicy(_BetaPolicy):
    """Observation vector [N, obs_size] and raster [N, C, S, S] -> Beta head.

    The raster goes through three stride-2 3x3 convolutions (S -> S/2 -> S/4 -> S/8), is flattened and
    concatenated with the vector, then an MLP. Rasters are floats in [0, 1]; uint8 rasters are divided by 255.
    """

    uses_raster = True

    def __init__(self, obs_size: int, config: PolicyConfig, actions: ActionMapping = DRIVING_ACTIONS) -> None:
        super().__init__(obs_size, config, actions)
        layers: list[nn.Module] = []
        in_channels = config.raster_channels
        for channels in config.conv_channels:
            conv = nn.Conv2d(in_channels, channels, kernel_size=3, stride=2, padding=1)
            layers += [_init(conv, HIDDEN_GAIN), _activation(config.activation)]
            in_channels = channels
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            # Measure the flattened size instead of deriving it, so the conv settings can change freely.
            dummy = torch.zeros(1, config.raster_channels, config.raster_size, config.raster_size)
            raster_features = self.encoder(dummy).shape[-1]
        self.trunk, features = _mlp(raster_features + self.input_size, config.hidden_sizes, config.activation)
        self.head = _BetaHead(features, actions.raw_dim)

    def distribution(self, inputs: Tensor, raster: Tensor | None = None) -> BetaActions:
        """The action distribution for encoded inputs [N, input_size] and rasters [N, C, S, S]."""
        size = self.config.raster_size
        expected = (inputs.shape[0], self.config.raster_channels, size, size)
        if raster is None:
            raise ValueError("CNNPolicy needs a raster [N, C, S, S]; enable the bird's-eye raster in the env")
        if tuple(raster.shape) != expected:
            raise ValueError(f"raster must have shape {list(expected)}; got {list(raster.shape)}")
        raster = raster.to(inputs.dtype) / 255.0 if raster.dtype == torch.uint8 else raster.to(inputs.dtype)
        features = torch.cat([self.encoder(raster), inputs], dim=-1)
        return self.head(self.trunk(features))


def build_policy(obs_size: int, config: PolicyConfig,
                 actions: ActionMapping = DRIVING_ACTIONS) -> MLPPolicy | CNNPolicy:
    """The policy network ``config.kind`` names, for observation vectors of ``obs_size`` features, acting
    through ``actions`` (driving controls by default)."""
    if config.kind == "mlp":
        return MLPPolicy(obs_size, config, actions)
    elif config.kind == "cnn":
        return CNNPolicy(obs_size, config, actions)
    else:
        raise ValueError(f"kind must be one of 'mlp', 'cnn'; got {config.kind!r}")


def decision_steps(repeats: tuple[int, ...], steps: int) -> Tensor:
    """[S, k] bool: for each of the first ``steps`` steps at which some dimension is sampled (every step
    where a repeat is 1), which dimensions are; ``repeats`` holds each dimension's action repeat."""
    marks = torch.arange(steps)[:, None] % torch.tensor(repeats)[None, :] == 0
    return marks[marks.any(dim=1)]


class HeldActions:
    """Acting with each raw action dimension held for the policy's ``action_repeat`` steps.

    Step 0 samples every dimension; at step t the dimensions with ``t % repeat == 0`` are sampled afresh and
    the others keep their value. The log-probability counts only the freshly sampled dimensions, so it is
    the exact likelihood of what the policy chose at that step. One instance drives one batch of worlds
    whose steps are counted together (a wave of branches, trunks or evaluation routes).
    """

    def __init__(self, policy: MLPPolicy | CNNPolicy) -> None:
        self.policy = policy
        self.repeats = torch.tensor(policy.action_repeat)
        self._raw: Tensor | None = None
        self._control: Tensor | None = None

    def decides(self, step: int) -> Tensor:
        """[k] bool: the dimensions sampled at ``step``."""
        return step % self.repeats == 0

    @torch.no_grad()
    def act(self, obs: Tensor, step: int, *, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Raw actions [N, k], backend actions and log-probabilities [N] of the dimensions sampled at ``step``;
        the log-probabilities are None at a step where every dimension is held (nothing was decided)."""
        decides = self.decides(step)
        if self._raw is None:  # the first step samples every dimension
            decides = torch.ones_like(decides)
        elif not decides.any():
            return self._raw, self._control, None
        actions = self.policy(obs)
        fresh = actions.mode() if deterministic else actions.sample(generator)
        raw = fresh if bool(decides.all()) else torch.where(decides.to(fresh.device), fresh, self._raw)
        self._raw, self._control = raw, self.policy.actions.to_env(raw)
        return raw, self._control, actions.log_prob(raw, decides.to(raw.device))
