"""Driving policies: an observation encoder and a Beta head over the 2-D raw action [acceleration, steer].

The head outputs four numbers per observation and maps them to concentrations ``alpha = 1 + softplus(x)``,
``beta = 1 + softplus(y)``: both exceed 1, so every action distribution is unimodal with zero density at the
bounds and a well-defined mode. The head's last layer is initialised orthogonally with gain 0.01 (CleanRL;
Andrychowicz et al. 2021, "What Matters in On-Policy Reinforcement Learning?") and zero bias, so the
initial policy is close to Beta(1 + ln 2, 1 + ln 2) ~ Beta(1.69, 1.69) in both dimensions: wide and centred
(no throttle or brake, straight steer on average), whatever the observation.

Driving policies read one derived input besides the observation (``obstacle_features``, on by default): what
is in the ego's way, as the privileged expert reads it from the same observation (envs.driving.expert). The
observation lists the 8 nearest vehicles and 4 nearest pedestrians; which of them is in the ego's path is a
geometric question (project each onto the route, compare the offset with the corridor's half-width) that an
MLP learns slowly: cloning the expert reaches a driving score of 54 without the input and 99 with it
(bench/imitation.py). The input gives the policy the answer as four numbers: the room before it should stand
behind the nearest vehicle or pedestrian in its way (the gap less a standstill gap of 3 m behind a vehicle,
4 m before a pedestrian; / 50), that obstacle's speed along the route (/ 10), pedestrian (1) or vehicle (0),
and valid; all zero when nothing is in the way. They are a function of the observation, so every backend
that fills the observation gives them; they are computed in the policy, not the simulator, so the
simulator's throughput does not pay for them.

``policy=entity`` (:class:`EntityPolicy`) reaches the same without the expert's reading: every vehicle and
pedestrian becomes a token that also carries its position along and across the route, and self-attention
over the tokens finds what is in the way (a clone of 99.7).

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
from envs.driving.expert import FAR, ExpertDriver
from grpo.distributions import DRIVING_ACTIONS, ActionMapping, BetaActions

PolicyKind = Literal["mlp", "cnn", "entity"]
Activation = Literal["tanh", "relu", "elu"]

# Hidden layers: orthogonal init with gain sqrt(2), as CleanRL's layer_init; the head uses HEAD_GAIN.
HIDDEN_GAIN = math.sqrt(2.0)
HEAD_GAIN = 0.01
OBSTACLE_INPUTS = ("room", "speed", "pedestrian", "valid")
ROUTE_FRAME_VEHICLE = 11  # features per vehicle slot from ExpertDriver.actors_along_route
ROUTE_FRAME_PEDESTRIAN = 7  # ... and per pedestrian slot


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
        obstacle_features: default True. Append the obstacle in the ego's way (see the module docstring) to
            driving observations before the network. Ignored for observations that are not the driving
            layout (gymnasium tasks).
        route_frame: default False. Append every vehicle and pedestrian slot expressed along the route
            (envs.driving.expert.ExpertDriver.actors_along_route: gaps along the path and clearances across it,
            now and predicted) to driving observations. The ``"entity"`` policy always reads them.
        token_size: default 64. ``"entity"``: width of every token (the ego and route, each vehicle, each
            pedestrian).
        token_layers: default 2. ``"entity"``: self-attention layers over the tokens (0 = each token embedded
            alone, then pooled: a Deep Sets encoder).
        token_heads: default 4. ``"entity"``: attention heads; must divide ``token_size``.
    """

    kind: PolicyKind = "mlp"
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: Activation = "tanh"
    raster_channels: int = 6
    raster_size: int = 64
    conv_channels: tuple[int, int, int] = (32, 64, 64)
    action_repeat: int | tuple[int, ...] = (5, 1)
    obstacle_features: bool = True
    route_frame: bool = False
    token_size: int = 64
    token_layers: int = 2
    token_heads: int = 4

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
        if self.token_size < 1 or self.token_layers < 0 or self.token_heads < 1 or self.token_size % self.token_heads:
            raise ValueError(f"token_size must be >= 1 and divisible by token_heads >= 1, token_layers >= 0; got "
                             f"{self.token_size}, {self.token_heads}, {self.token_layers}")
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
        route_frame = driving and (config.route_frame or config.kind == "entity")
        self.reader = ExpertDriver() if driving and (config.obstacle_features or route_frame) else None
        self.obstacle_features = driving and config.obstacle_features
        self.route_frame = route_frame
        layout = OBSERVATION_LAYOUT
        route_inputs = layout.num_vehicles * ROUTE_FRAME_VEHICLE + layout.num_pedestrians * ROUTE_FRAME_PEDESTRIAN
        self.input_size = (obs_size + (len(OBSTACLE_INPUTS) if self.obstacle_features else 0)
                           + (route_inputs if route_frame else 0))
        repeat = config.action_repeat
        self._repeats = repeat if isinstance(repeat, tuple) else (repeat,) * actions.raw_dim
        if len(self._repeats) != actions.raw_dim:
            raise ValueError(f"action_repeat needs one entry per action dimension ({actions.raw_dim}); got {repeat}")

    def encode(self, obs: Tensor) -> Tensor:
        """The network's vector input [N, input_size] for observations [N, obs_size]."""
        _check_obs(obs, self.obs_size)
        if self.reader is None:
            return obs
        parts = [obs]
        if self.obstacle_features:
            parts.append(obstacle_inputs(obs, self.reader))
        if self.route_frame:
            vehicles, pedestrians = self.reader.actors_along_route(obs)
            parts += [vehicles.flatten(1), pedestrians.flatten(1)]
        return torch.cat(parts, dim=-1)

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


class _TokenLayer(nn.Module):
    """A pre-norm transformer encoder layer (attention over the real tokens, then a 2x-wide MLP), written out
    rather than nn.TransformerEncoderLayer, whose fused inference path gives slightly different numbers without
    gradients: the rollout's log-probabilities and the update's must agree."""

    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = nn.LayerNorm(size), nn.LayerNorm(size)
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)
        self.mlp = nn.Sequential(nn.Linear(size, 2 * size), nn.GELU(), nn.Linear(2 * size, size))

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """tokens [N, T, D], real [N, T] bool -> [N, T, D]; padding tokens neither attend nor are attended to
        (their own outputs are unused)."""
        n, t, d = tokens.shape
        q, k, v = self.qkv(self.attention_norm(tokens)).view(n, t, 3, self.heads, d // self.heads).unbind(2)
        scores = torch.einsum("nqhc,nkhc->nhqk", q, k) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~real[:, None, None, :], -torch.inf)
        attended = torch.einsum("nhqk,nkhc->nqhc", scores.softmax(-1), v).reshape(n, t, d)
        tokens = tokens + self.out(attended)
        return tokens + self.mlp(self.mlp_norm(tokens))


class EntityPolicy(_BetaPolicy):
    """Driving observation -> tokens -> self-attention -> Beta head (after PlanT, Renz et al. 2022, which plans
    from object-level tokens in CARLA).

    Tokens: one for the ego and its route (ego features, route points, the traffic light, and the obstacle
    inputs when ``obstacle_features`` is on), one per vehicle slot and one per pedestrian slot, each its
    observation features beside the same slot expressed along the route
    (:meth:`envs.driving.expert.ExpertDriver.actors_along_route`). Each kind has its own embedding; empty slots
    are masked out of attention and pooling. ``token_layers`` pre-norm transformer layers let every token
    read the others; the ego token's output, with the element-wise max over the road users' outputs, goes
    through the ``hidden_sizes`` MLP to the Beta head. Slots are a set: the encoder does not depend on their
    order, so "nearest first" is no longer something to learn around.

    Driving observations only (the layout of envs.api); any other observation is refused at construction.
    """

    uses_raster = False

    def __init__(self, obs_size: int, config: PolicyConfig, actions: ActionMapping = DRIVING_ACTIONS) -> None:
        super().__init__(obs_size, config, actions)
        if not self.route_frame:
            raise ValueError(f"policy.kind=entity reads driving observations of {OBSERVATION_LAYOUT.size} features "
                             f"with driving actions; got {obs_size} features ({actions.kind} actions): use policy=mlp")
        layout, size = OBSERVATION_LAYOUT, config.token_size
        slices = layout.slices
        self._ego = torch.cat([torch.arange(slices[name].start, slices[name].stop)
                               for name in ("ego", "route", "light")])
        ego_inputs = len(self._ego) + (len(OBSTACLE_INPUTS) if self.obstacle_features else 0)
        self._vehicle_size = len(layout.VEHICLE_FEATURES) + ROUTE_FRAME_VEHICLE
        self._pedestrian_size = len(layout.PEDESTRIAN_FEATURES) + ROUTE_FRAME_PEDESTRIAN

        def embedding(inputs: int) -> nn.Sequential:
            return nn.Sequential(_init(nn.Linear(inputs, size), HIDDEN_GAIN), _activation(config.activation),
                                 _init(nn.Linear(size, size), 1.0))

        self.ego_embedding = embedding(ego_inputs)
        self.vehicle_embedding = embedding(self._vehicle_size)
        self.pedestrian_embedding = embedding(self._pedestrian_size)
        self.layers = nn.ModuleList(_TokenLayer(size, config.token_heads) for _ in range(config.token_layers))
        self.norm = nn.LayerNorm(size)
        self.trunk, features = _mlp(2 * size, config.hidden_sizes, config.activation)
        self.head = _BetaHead(features, actions.raw_dim)

    def tokens(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Encoded inputs [N, input_size] -> embedded tokens [N, 1 + K + Kp, token_size] (the ego first) and
        which are real [N, 1 + K + Kp] bool (the ego always)."""
        layout, slices, n = OBSERVATION_LAYOUT, OBSERVATION_LAYOUT.slices, inputs.shape[0]
        k, kp = layout.num_vehicles, layout.num_pedestrians
        ego = inputs[:, self._ego.to(inputs.device)]
        extra = inputs[:, self.obs_size:]
        if self.obstacle_features:
            ego = torch.cat([ego, extra[:, :len(OBSTACLE_INPUTS)]], -1)
            extra = extra[:, len(OBSTACLE_INPUTS):]
        vehicles = torch.cat([inputs[:, slices["vehicles"]].view(n, k, -1),
                              extra[:, :k * ROUTE_FRAME_VEHICLE].view(n, k, -1)], -1)
        pedestrians = torch.cat([inputs[:, slices["pedestrians"]].view(n, kp, -1),
                                 extra[:, k * ROUTE_FRAME_VEHICLE:].view(n, kp, -1)], -1)
        tokens = torch.cat([self.ego_embedding(ego)[:, None], self.vehicle_embedding(vehicles),
                            self.pedestrian_embedding(pedestrians)], 1)
        real = torch.cat([torch.ones_like(ego[:, :1], dtype=torch.bool),
                          vehicles[..., len(layout.VEHICLE_FEATURES) - 1] > 0.5,
                          pedestrians[..., len(layout.PEDESTRIAN_FEATURES) - 1] > 0.5], 1)
        return tokens, real

    def distribution(self, inputs: Tensor, raster: Tensor | None = None) -> BetaActions:
        """The action distribution for encoded inputs [N, input_size]."""
        tokens, real = self.tokens(inputs)
        for layer in self.layers:
            tokens = layer(tokens, real)
        tokens = self.norm(tokens)
        users = torch.where(real[:, 1:, None], tokens[:, 1:], -torch.inf).amax(1)
        users = torch.where(real[:, 1:].any(1, keepdim=True), users, 0.0)
        return self.head(self.trunk(torch.cat([tokens[:, 0], users], -1)))


def build_policy(obs_size: int, config: PolicyConfig,
                 actions: ActionMapping = DRIVING_ACTIONS) -> MLPPolicy | CNNPolicy | EntityPolicy:
    """The policy network ``config.kind`` names, for observation vectors of ``obs_size`` features, acting
    through ``actions`` (driving controls by default)."""
    if config.kind == "mlp":
        return MLPPolicy(obs_size, config, actions)
    elif config.kind == "cnn":
        return CNNPolicy(obs_size, config, actions)
    elif config.kind == "entity":
        return EntityPolicy(obs_size, config, actions)
    else:
        raise ValueError(f"kind must be one of 'mlp', 'cnn', 'entity'; got {config.kind!r}")


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

    def __init__(self, policy: MLPPolicy | CNNPolicy | EntityPolicy) -> None:
        self.policy = policy
        self.repeats = torch.tensor(policy.action_repeat)
        self._raw: Tensor | None = None
        self._control: Tensor | None = None

    def decides(self, step: int) -> Tensor:
        """[k] bool: the dimensions sampled at ``step``."""
        return step % self.repeats == 0

    @torch.no_grad()
    def act(self, obs: Tensor, step: int, *, raster: Tensor | None = None, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Raw actions [N, k], backend actions and log-probabilities [N] of the dimensions sampled at ``step``
        (``raster`` [N, C, S, S] for a policy that reads one); the log-probabilities are None at a step where
        every dimension is held (nothing was decided)."""
        decides = self.decides(step)
        if self._raw is None:  # the first step samples every dimension
            decides = torch.ones_like(decides)
        elif not decides.any():
            return self._raw, self._control, None
        actions = self.policy(obs, raster)
        fresh = actions.mode() if deterministic else actions.sample(generator)
        raw = fresh if bool(decides.all()) else torch.where(decides.to(fresh.device), fresh, self._raw)
        self._raw, self._control = raw, self.policy.actions.to_env(raw)
        return raw, self._control, actions.log_prob(raw, decides.to(raw.device))
