"""Behaviour cloning of the expert before GRPO: the demonstrations, the fit, and the trainer's warm start."""

import pytest
import torch

from envs.driving.expert import ExpertDriver
from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim
from grpo.distributions import raw_to_control
from grpo.policy import MLPPolicy, PolicyConfig
from grpo.pretrain import (
    PretrainConfig,
    behaviour_cloning,
    collect_demonstrations,
    control_to_raw,
    drive_policy,
    warm_start,
)
from grpo.trainer import Trainer
from tests.grpo.test_trainer import quiet_config


def test_control_to_raw_inverts_raw_to_control():
    raw = torch.rand(64, 2)
    assert torch.allclose(control_to_raw(raw_to_control(raw)), raw, atol=1e-6)


def test_demonstrations_are_labelled_with_the_clean_expert_action():
    sim = DrivingSim(SimConfig(num_worlds=4, map="straight", num_towns=2))
    expert = ExpertDriver()
    observations, labels = collect_demonstrations(sim, expert, steps=30, seeds=list(range(100)), noise=0.3,
                                                  generator=torch.Generator().manual_seed(0))
    assert observations.shape == (4 * 30, sim.observation_size) and labels.shape == (4 * 30, 2)
    assert torch.allclose(labels, control_to_raw(expert.act(observations)), atol=1e-6)
    assert ((labels >= 0) & (labels <= 1)).all()


def _steady_policy(obs_size: int, acceleration_logits: tuple[float, float]) -> MLPPolicy:
    """A policy whose acceleration is Beta(1 + softplus(a), 1 + softplus(b)) whatever it sees, and whose
    steering is centred: (20, -20) always throttles fully, (-20, 20) always brakes fully."""
    policy = MLPPolicy(obs_size, PolicyConfig(hidden_sizes=(8, 8)))
    with torch.no_grad():
        policy.head.linear.weight.zero_()
        policy.head.linear.bias.copy_(torch.tensor([acceleration_logits[0], 0.0, acceleration_logits[1], 0.0]))
    return policy


def test_drive_policy_returns_the_states_the_policy_itself_drives_into():
    # The same worlds and seeds driven by a policy that brakes and by one that throttles: the DAgger states
    # are the learner's own, so the ego's speed (the first ego feature, m/s / 10) differs accordingly.
    sim = DrivingSim(SimConfig(num_worlds=4, map="straight", num_towns=2))
    speed = sim.layout.slices["ego"].start
    seen = {}
    for name, logits in (("brakes", (-20.0, 20.0)), ("throttles", (20.0, -20.0))):
        observations = drive_policy(sim, _steady_policy(sim.observation_size, logits), steps=40,
                                    seeds=range(100), generator=torch.Generator().manual_seed(0))
        assert observations.shape == (4 * 40, sim.observation_size)
        seen[name] = observations.view(40, 4, -1)[-1, :, speed] * 10.0  # m/s at the last step
    assert (seen["brakes"] < 0.5).all()
    assert (seen["throttles"] > 5.0).all()


def test_warm_start_adds_the_clones_own_states_in_each_dagger_round(capsys):
    sim = DrivingSim(SimConfig(num_worlds=4, map="straight", num_towns=2))
    policy = MLPPolicy(sim.observation_size, PolicyConfig(hidden_sizes=(16, 16)))
    config = PretrainConfig(demo_steps=20, updates=30, batch_size=32, dagger_rounds=2, dagger_steps=10,
                            dagger_updates=5)
    metrics = warm_start(policy, sim, config, range(1000), torch.Generator().manual_seed(0))
    out = capsys.readouterr().out
    assert "DAgger round 1/2, 120 samples" in out and "DAgger round 2/2, 160 samples" in out  # 4 x 20, + 4 x 10
    assert metrics["pretrain/samples"] == 160.0
    assert metrics["pretrain/updates"] == 30.0 + 2 * 5
    assert metrics["pretrain/dagger_rounds"] == 2.0


@pytest.mark.parametrize("field, value", [("dagger_rounds", -1), ("dagger_steps", 0), ("dagger_updates", 0)])
def test_dagger_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=f"got .*{value}"):
        PretrainConfig(**{field: value})


def test_behaviour_cloning_fits_the_labels():
    torch.manual_seed(0)
    observations = torch.randn(512, 6)
    labels = torch.sigmoid(observations[:, :2] @ torch.tensor([[1.0, -0.5], [0.5, 1.0]]))  # a smooth target
    policy = MLPPolicy(6, PolicyConfig(hidden_sizes=(32, 32)))
    before = (policy(observations).mode() - labels).abs().mean().item()
    metrics = behaviour_cloning(policy, observations, labels, PretrainConfig(updates=400, batch_size=128),
                                torch.Generator().manual_seed(0))
    assert metrics["pretrain/mode_error"] < 0.05 < before
    assert metrics["pretrain/samples"] == 512.0


def test_trainer_warm_start_clones_the_expert_and_freezes_it_as_the_reference(tmp_path, capsys):
    config = quiet_config(tmp_path, pretrain={"demo_steps": 40, "updates": 60, "batch_size": 64},
                          grpo={"beta": 0.04})
    trainer = Trainer(config)
    initial = {name: value.clone() for name, value in trainer.policy.state_dict().items()}
    trainer.begin()
    try:
        assert "pretrain: cloned the expert" in capsys.readouterr().out
        cloned = trainer.policy.state_dict()
        assert any(not torch.equal(initial[name], cloned[name]) for name in initial)
        assert all(torch.equal(cloned[name], value) for name, value in trainer.reference.state_dict().items())
        trainer.train_iteration()  # GRPO goes on from the cloned policy
    finally:
        trainer.finish()


def test_warm_start_is_skipped_without_an_expert(tmp_path, capsys):
    config = quiet_config(tmp_path, pretrain={"updates": 10}, policy={"kind": "cnn", "hidden_sizes": [32, 32]})
    trainer = Trainer(config)
    try:
        assert trainer.pretrain() == {}
        assert "pretrain: skipped" in capsys.readouterr().out
    finally:
        trainer.finish()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_warm_start_with_the_policy_and_the_worlds_on_cuda():
    # DAgger samples on the policy's device: a CPU generator cannot drive a CUDA policy.
    sim = DrivingSim(SimConfig(num_worlds=4, map="straight", num_towns=2, device="cuda"))
    policy = MLPPolicy(sim.observation_size, PolicyConfig(hidden_sizes=(16, 16))).cuda()
    config = PretrainConfig(demo_steps=10, updates=5, batch_size=16, dagger_rounds=1, dagger_steps=10,
                            dagger_updates=5)
    metrics = warm_start(policy, sim, config, range(100), torch.Generator().manual_seed(0), report=lambda line: None)
    assert metrics["pretrain/samples"] == 4 * 10 + 4 * 10
