"""Policy networks: shapes, initial distribution, gradients, the CNN path and config validation."""

from __future__ import annotations

import math

import pytest
import torch

from envs.api import OBSERVATION_LAYOUT
from grpo.distributions import BetaActions
from grpo.policy import CNNPolicy, HeldActions, MLPPolicy, PolicyConfig, build_policy, decision_steps

OBS_SIZE = 12
SMALL_CNN = PolicyConfig(kind="cnn", hidden_sizes=(32,), raster_channels=6, raster_size=16)


def _obs(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, OBS_SIZE, generator=torch.Generator().manual_seed(seed))


def _raster(n: int = 5, config: PolicyConfig = SMALL_CNN) -> torch.Tensor:
    shape = (n, config.raster_channels, config.raster_size, config.raster_size)
    return torch.rand(shape, generator=torch.Generator().manual_seed(1))


def test_mlp_output_shapes():
    torch.manual_seed(0)
    policy = MLPPolicy(OBS_SIZE, PolicyConfig(hidden_sizes=(64, 64)))
    actions = policy(_obs())
    assert isinstance(actions, BetaActions)
    assert actions.alpha.shape == (5, 2) and actions.beta.shape == (5, 2)
    raw, control, log_prob = policy.act(_obs(), generator=torch.Generator().manual_seed(0))
    assert raw.shape == (5, 2) and control.shape == (5, 3) and log_prob.shape == (5,)
    assert not log_prob.requires_grad  # act runs under no_grad
    torch.testing.assert_close(log_prob, actions.log_prob(raw).detach())


def test_initial_policy_is_wide_and_centred():
    # Head gain 0.01 and zero bias: logits ~ 0, so alpha = beta ~ 1 + softplus(0) = 1 + ln 2.
    torch.manual_seed(0)
    policy = build_policy(OBS_SIZE, PolicyConfig())
    actions = policy(_obs(n=64) * 3.0)
    target = 1.0 + math.log(2.0)
    assert (actions.alpha - target).abs().max().item() < 0.05
    assert (actions.beta - target).abs().max().item() < 0.05
    # Deterministic action: raw ~ 0.5, i.e. coast and steer straight.
    _, control, _ = policy.act(_obs(n=64), deterministic=True)
    assert control.abs().max().item() < 0.05


def test_deterministic_act_is_the_mode_and_sampling_is_seeded():
    torch.manual_seed(0)
    policy = build_policy(OBS_SIZE, PolicyConfig(hidden_sizes=(32,)))
    obs = _obs()
    raw, _, _ = policy.act(obs, deterministic=True)
    torch.testing.assert_close(raw, policy(obs).mode().detach())
    first, _, _ = policy.act(obs, generator=torch.Generator().manual_seed(3))
    second, _, _ = policy.act(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    policy = build_policy(OBS_SIZE, PolicyConfig(hidden_sizes=(32, 32), activation="elu"))
    raw, _, _ = policy.act(_obs())
    actions = policy(_obs())
    (-actions.log_prob(raw).mean() - actions.entropy().mean()).backward()
    for name, parameter in policy.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum().item() > 0, name


def test_linear_policy_without_hidden_layers():
    policy = MLPPolicy(OBS_SIZE, PolicyConfig(hidden_sizes=()))
    assert policy(_obs()).alpha.shape == (5, 2)


def test_cnn_forward_with_a_raster_and_gradients():
    torch.manual_seed(0)
    policy = build_policy(OBS_SIZE, SMALL_CNN)
    assert isinstance(policy, CNNPolicy) and policy.uses_raster
    raw, control, log_prob = policy.act(_obs(), _raster(), generator=torch.Generator().manual_seed(0))
    assert raw.shape == (5, 2) and control.shape == (5, 3) and log_prob.shape == (5,)
    policy(_obs(), _raster()).log_prob(raw).mean().backward()
    for name, parameter in policy.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum().item() > 0, name


def test_cnn_default_raster_size_and_uint8_rasters():
    policy = build_policy(OBS_SIZE, PolicyConfig(kind="cnn", hidden_sizes=(32,)))
    raster = (_raster(2, PolicyConfig()) * 255).to(torch.uint8)  # default 6 x 64 x 64
    actions = policy(_obs(2), raster)
    assert actions.alpha.shape == (2, 2)
    assert torch.isfinite(actions.alpha).all()


def test_cnn_rejects_a_missing_or_misshapen_raster():
    policy = build_policy(OBS_SIZE, SMALL_CNN)
    with pytest.raises(ValueError, match="needs a raster"):
        policy(_obs())
    with pytest.raises(ValueError, match="raster must have shape"):
        policy(_obs(), torch.zeros(5, 3, 16, 16))


def test_driving_policies_also_read_the_obstacle_in_the_way():
    from envs.api import OBSERVATION_LAYOUT
    from envs.driving.expert import ExpertDriver
    from grpo.distributions import ActionMapping

    layout = OBSERVATION_LAYOUT
    obs = torch.zeros(2, layout.size)
    obs[:, layout.slices["ego"].start] = 1.0  # 10 m/s on a straight route
    obs[:, layout.slices["route"]] = torch.stack([torch.arange(1, 11) * 5.0 / 50, torch.zeros(10)], 1).reshape(-1)
    vehicles = layout.slices["vehicles"].start
    # world 1: a car 20 m ahead (centre to centre) driving at 2 m/s; world 0: an empty road
    obs[1, vehicles:vehicles + 9] = torch.tensor([20.0 / 50, 0.0, 1.0, 0.0, 0.2, 0.0, 0.96, 0.38, 1.0])
    policy = build_policy(layout.size, PolicyConfig(hidden_sizes=(16,), obstacle_features=True))
    assert policy.input_size == layout.size + 4 and policy.trunk[0].in_features == layout.size + 4
    inputs = policy.encode(obs)
    assert torch.equal(inputs[:, :layout.size], obs) and (inputs[0, layout.size:] == 0).all()
    room = 20.0 - 4.8 - ExpertDriver().config.vehicle_gap  # bumper to bumper, less the standstill gap
    assert inputs[1, layout.size:].tolist() == pytest.approx([room / 50, 2.0 / 10, 0.0, 1.0], abs=1e-5)
    torch.testing.assert_close(policy(obs).alpha, policy.distribution(inputs).alpha)  # forward = both steps
    assert PolicyConfig().obstacle_features  # on by default
    # off, or observations that are not the driving layout (a gymnasium task): the observation alone
    plain = build_policy(layout.size, PolicyConfig(hidden_sizes=(16,), obstacle_features=False))
    assert plain.input_size == layout.size and torch.equal(plain.encode(obs), obs)
    box = build_policy(3, PolicyConfig(hidden_sizes=(16,), action_repeat=1, obstacle_features=True),
                       ActionMapping("box", (-1.0,), (1.0,)))
    assert box.input_size == 3 and not box.obstacle_features and box.reader is None


def test_mlp_rejects_wrong_observation_size():
    policy = build_policy(OBS_SIZE, PolicyConfig(hidden_sizes=(8,)))
    with pytest.raises(ValueError, match=r"obs must have shape \[N, 12\]"):
        policy(torch.zeros(5, OBS_SIZE + 1))


def test_config_turns_lists_into_tuples():
    config = PolicyConfig(hidden_sizes=[16, 16])  # as a structured config would pass it
    assert config.hidden_sizes == (16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "transformer"}, "kind must be one of"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes must all be >= 1"),
        ({"raster_size": 4}, "raster_size must be >= 8"),
        ({"raster_channels": 0}, "raster_channels must be >= 1"),
        ({"conv_channels": (32, 64)}, "conv_channels must be three"),
        ({"action_repeat": 0}, "action_repeat must be an int >= 1"),
        ({"action_repeat": [5, 0]}, "action_repeat must be an int >= 1"),
    ],
)
def test_config_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)


def test_action_repeat_is_one_per_dimension():
    assert build_policy(OBS_SIZE, PolicyConfig(action_repeat=3)).action_repeat == (3, 3)
    assert build_policy(OBS_SIZE, PolicyConfig(action_repeat=[5, 1])).action_repeat == (5, 1)
    with pytest.raises(ValueError, match="one entry per action dimension"):
        build_policy(OBS_SIZE, PolicyConfig(action_repeat=(5, 1, 1)))


def test_decision_steps_mark_the_dimensions_sampled_at_each_decision():
    # Repeats (3, 2) over 7 steps: steps 0, 2, 3, 4, 6 decide something; step 1 and 5 hold both dimensions.
    assert decision_steps((3, 2), 7).tolist() == [[True, True], [False, True], [True, False], [False, True],
                                                  [True, True]]
    assert decision_steps((1, 1), 4).all() and decision_steps((1, 1), 4).shape == (4, 2)


def test_held_actions_hold_a_dimension_and_count_only_fresh_samples():
    torch.manual_seed(0)
    policy = build_policy(OBS_SIZE, PolicyConfig(hidden_sizes=(16,), action_repeat=[3, 1]))
    held, generator = HeldActions(policy), torch.Generator().manual_seed(0)
    raws, log_probs = [], []
    for step in range(4):
        raw, control, log_prob = held.act(_obs(seed=step), step, generator=generator)
        torch.testing.assert_close(control, policy.actions.to_env(raw))
        raws.append(raw)
        log_probs.append(log_prob)
        dims = torch.tensor([step % 3 == 0, True])
        torch.testing.assert_close(log_prob, policy(_obs(seed=step)).log_prob(raw, dims).detach())
    assert torch.equal(raws[1][:, 0], raws[0][:, 0]) and torch.equal(raws[2][:, 0], raws[0][:, 0])
    assert not torch.equal(raws[3][:, 0], raws[0][:, 0])  # step 3 samples the acceleration again
    assert not torch.equal(raws[1][:, 1], raws[0][:, 1])  # steer is sampled every step
    everything_held = HeldActions(build_policy(OBS_SIZE, PolicyConfig(action_repeat=2)))
    first, _, _ = everything_held.act(_obs(), 0, generator=generator)
    again, _, log_prob = everything_held.act(_obs(seed=1), 1, generator=generator)
    assert torch.equal(first, again) and log_prob is None  # nothing decided at step 1


def _driving_obs(num_worlds: int = 6, seed: int = 0) -> torch.Tensor:
    """Observations of a busy procedural town a few seconds in: vehicles, pedestrians and lights in the slots."""
    from envs.sim.config import SimConfig
    from envs.sim.world import DrivingSim

    sim = DrivingSim(SimConfig(num_worlds=num_worlds, num_towns=1))
    obs = sim.reset(seed)
    for _ in range(20):
        obs = sim.step(torch.tensor([[0.4, 0.0, 0.0]]).repeat(num_worlds, 1)).observation
    return obs


@pytest.mark.parametrize("kind", ["mlp", "entity"])
def test_log_probabilities_match_torch_distributions(kind):
    # The policy's Beta log-density (written out, summed over the action dimensions) is torch's Beta.log_prob.
    torch.manual_seed(0)
    obs = _driving_obs()
    policy = build_policy(obs.shape[1], PolicyConfig(kind=kind, hidden_sizes=(32,), token_size=16, token_layers=1))
    actions = policy(obs)
    raw = torch.rand(len(obs), 2, generator=torch.Generator().manual_seed(1)).clamp(0.01, 0.99)
    expected = torch.distributions.Beta(actions.alpha, actions.beta).log_prob(raw).sum(-1)
    torch.testing.assert_close(actions.log_prob(raw), expected)
    # only the sampled dimension counts where the other is held
    dims = torch.tensor([False, True])
    torch.testing.assert_close(actions.log_prob(raw, dims),
                               torch.distributions.Beta(actions.alpha[:, 1], actions.beta[:, 1]).log_prob(raw[:, 1]))


def test_entity_policy_reads_road_users_as_a_set():
    # The order of the vehicle slots does not matter, and an empty slot's contents are never read.
    torch.manual_seed(0)
    layout = OBSERVATION_LAYOUT
    obs = _driving_obs()
    policy = build_policy(layout.size, PolicyConfig(kind="entity", hidden_sizes=(32,), token_size=16))
    vehicles = obs[:, layout.slices["vehicles"]].view(len(obs), layout.num_vehicles, -1)
    assert (vehicles[..., 8] > 0.5).sum() >= 2, "the busy world shows vehicles"
    swapped = obs.clone()
    swapped[:, layout.slices["vehicles"]] = vehicles.flip(1).reshape(len(obs), -1)
    torch.testing.assert_close(policy(swapped).alpha, policy(obs).alpha, atol=1e-5, rtol=1e-5)
    # empty the last two slots (as the observation writes them: zeros), then fill them with garbage whose valid
    # flag stays 0: nothing changes
    vehicles[:, -2:] = 0.0
    obs = obs.clone()
    obs[:, layout.slices["vehicles"]] = vehicles.reshape(len(obs), -1)
    garbage = obs.clone()
    slots = garbage[:, layout.slices["vehicles"]].view(len(obs), layout.num_vehicles, -1)
    empty = slots[..., 8] < 0.5
    slots[..., :8] = torch.where(empty[..., None], torch.randn_like(slots[..., :8]), slots[..., :8])
    garbage[:, layout.slices["vehicles"]] = slots.reshape(len(obs), -1)
    assert empty.any()
    torch.testing.assert_close(policy(garbage).alpha, policy(obs).alpha, atol=1e-5, rtol=1e-5)
    # and a vehicle it does see changes the action distribution
    moved = obs.clone()
    first = moved[:, layout.slices["vehicles"]].view(len(obs), layout.num_vehicles, -1)
    first[:, 0, 0] += 0.2
    moved[:, layout.slices["vehicles"]] = first.reshape(len(obs), -1)
    assert not torch.allclose(policy(moved).alpha, policy(obs).alpha)


def test_entity_policy_refuses_other_observations():
    with pytest.raises(ValueError, match="policy.kind=entity reads driving observations"):
        build_policy(OBS_SIZE, PolicyConfig(kind="entity"))
    with pytest.raises(ValueError, match="divisible by token_heads"):
        PolicyConfig(kind="entity", token_size=10, token_heads=4)
