"""Behaviour cloning of the expert before GRPO: the demonstrations, the fit, and the trainer's warm start."""

import torch

from envs.sim.config import SimConfig
from envs.sim.expert import ExpertDriver
from envs.sim.world import DrivingSim
from grpo.distributions import raw_to_control
from grpo.policy import MLPPolicy, PolicyConfig
from grpo.pretrain import PretrainConfig, behaviour_cloning, collect_demonstrations, control_to_raw
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


def test_warm_start_is_off_by_default_and_skipped_without_an_expert(tmp_path, capsys):
    assert PretrainConfig().updates == 0
    config = quiet_config(tmp_path, pretrain={"updates": 10}, policy={"kind": "cnn", "hidden_sizes": [32, 32]})
    trainer = Trainer(config)
    try:
        assert trainer.pretrain() == {}
        assert "pretrain: skipped" in capsys.readouterr().out
    finally:
        trainer.finish()
