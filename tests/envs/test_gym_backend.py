"""Gymnasium environments as backends: config, spaces, seeding, frozen ends, both snapshot kinds, the snapshot
contract, and GRPO training on Pendulum."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces

from envs import gym_backend
from envs.api import BackendError, Snapshot
from envs.contract import ContractError, check_snapshot_contract
from envs.factory import ServiceConfig, build_backend, env_config_from_dict
from envs.gym_backend import GymBackend, GymConfig, decode_rng, decode_state, encode_rng, encode_state
from envs.typed_config import ConfigError, to_dict

ROOT = Path(__file__).parents[2]


# --- small envs registered for these tests ---------------------------------------------------------------------


class DriftEnv(gymnasium.Env):
    """A 1-D point pushed by its action plus noise from np_random; its state API is get_state / set_state."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.velocity, self.pushes, self.last = float(self.np_random.normal()), np.float32(0), 0, None
        return self._obs(), {}

    def step(self, action):
        self.velocity = np.float32(0.9 * self.velocity + action[0] + 0.1 * self.np_random.normal())
        self.position += float(self.velocity) * 0.1
        self.pushes += 1
        self.last = np.array([action[0]], np.float32)
        return self._obs(), -abs(self.position), abs(self.position) > 5.0, False, {}

    def _obs(self):
        return np.array([self.position, self.velocity], np.float32)

    def get_state(self):
        return {"position": self.position, "velocity": self.velocity, "pushes": self.pushes, "last": self.last}

    def set_state(self, state):
        self.position, self.velocity, self.pushes, self.last = (state[k] for k in ("position", "velocity", "pushes",
                                                                                    "last"))


class LockedEnv(DriftEnv):
    """No state API and a lock that copy.deepcopy cannot copy."""

    get_state = None
    set_state = None

    def __init__(self):
        self.lock = threading.Lock()


class DictObservationEnv(DriftEnv):
    observation_space = spaces.Dict({"x": spaces.Box(-1.0, 1.0, (1,), np.float32)})


class UnboundedActionEnv(DriftEnv):
    action_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)


for _name, _cls in {"Drift": DriftEnv, "Locked": LockedEnv, "DictObservation": DictObservationEnv,
                    "UnboundedAction": UnboundedActionEnv}.items():
    if f"GymBackendTest/{_name}-v0" not in gymnasium.registry:
        gymnasium.register(f"GymBackendTest/{_name}-v0", entry_point=_cls, max_episode_steps=40)


def pendulum(num_worlds: int = 4, **overrides) -> GymBackend:
    return GymBackend(GymConfig(id="Pendulum-v1", num_worlds=num_worlds, **overrides))


def contract_backend(env_id: str, num_worlds: int = 4, **overrides):
    """A factory for envs.contract.check_snapshot_contract."""
    return lambda: GymBackend(GymConfig(id=env_id, num_worlds=num_worlds, **overrides))


# --- config -------------------------------------------------------------------------------------------------------


def test_gym_yaml_matches_the_dataclass_defaults_key_for_key():
    data = yaml.safe_load((ROOT / "conf" / "env" / "gym.yaml").read_text())
    config = env_config_from_dict(data)
    assert config.to_flat_dict() == {"backend": "gym", **to_dict(ServiceConfig()), **to_dict(GymConfig())}


def test_episode_limit_is_the_registered_one_unless_set():
    assert GymConfig().max_episode_steps == 200  # Pendulum-v1's registered limit, filled in
    assert GymConfig(id="MountainCarContinuous-v0").max_episode_steps == 999
    config = env_config_from_dict({"backend": "gym", "max_episode_steps": 30})
    assert env_config_from_dict(config.to_flat_dict()) == config and config.backend_config.max_episode_steps == 30


@pytest.mark.parametrize("data,message", [
    ({"id": "Pendulm-v1"}, "not a registered gymnasium environment.*Did you mean"),
    ({"id": "no_such_module:Env-v0"}, "cannot import 'no_such_module'"),
    ({"num_worlds": 0}, "num_worlds must be >= 1"),
    ({"kwargs": {"max_episode_steps": 5}}, "env.max_episode_steps, not env.kwargs"),
    ({"snapshot": "pickle"}, "env.snapshot must be one of"),
])
def test_bad_gym_config(data, message):
    with pytest.raises(ConfigError, match=message):
        env_config_from_dict({"backend": "gym", **data})


def test_factory_builds_the_backend_with_worlds_and_split():
    backend = build_backend(env_config_from_dict({"backend": "gym", "id": "MountainCarContinuous-v0"}),
                            num_worlds=3, split="eval")
    assert isinstance(backend, GymBackend) and backend.num_worlds == 3 and backend.config.split == "eval"
    backend.close()


def test_module_prefixed_id_imports_the_registering_module():
    backend = GymBackend(GymConfig(id="tests.envs.test_gym_backend:GymBackendTest/Drift-v0", num_worlds=1))
    assert backend.snapshot_mode == "state" and backend.config.max_episode_steps == 40
    backend.close()


# --- spaces, seeds, stepping ---------------------------------------------------------------------------------


def test_spaces_become_sizes_and_bounds():
    backend = pendulum()
    assert backend.observation_size == 3 and backend.action_bounds == ((-2.0,), (2.0,)) and backend.action_size == 1
    assert backend.snapshot_mode == "state"
    backend.close()


@pytest.mark.parametrize("env_id,message", [
    ("CartPole-v1", "action space Discrete.*needs a Box action space"),
    ("GymBackendTest/UnboundedAction-v0", "infinite or empty bounds"),
    ("GymBackendTest/DictObservation-v0", "observation space Dict.*needs a Box"),
])
def test_unsupported_spaces_are_refused(env_id, message):
    with pytest.raises(BackendError, match=message):
        GymBackend(GymConfig(id=env_id))


def test_episode_seeds_are_gymnasium_seeds():
    backend = pendulum(2)
    expected, _ = gymnasium.make("Pendulum-v1").reset(seed=5)
    assert torch.equal(backend.reset([5, 5])[1], torch.from_numpy(expected))
    first = backend.reset(11)
    assert torch.equal(pendulum(2).reset(11), first) and not torch.equal(first[0], first[1])  # per world
    evaluation = pendulum(2, split="eval")
    assert not torch.equal(evaluation.reset([5, 5])[0], torch.from_numpy(expected))  # held-out episodes


def test_actions_are_checked_and_clipped():
    backend = pendulum(2)
    with pytest.raises(BackendError, match=r"shape \[2, 1\] \(1 action values per world\), got \[2, 3\]"):
        backend.step(torch.zeros(2, 3))
    with pytest.raises(BackendError, match="NaN or inf"):
        backend.step(torch.tensor([[0.0], [float("nan")]]))
    backend.reset([3, 3])
    result = backend.step(torch.tensor([[2.0], [50.0]]))  # 50 is clipped to the bound 2
    assert torch.equal(result.observation[0], result.observation[1])
    assert result.info["return_so_far"].dtype == torch.float32 and result.info["episode_steps"].tolist() == [1, 1]


def test_ended_worlds_stay_frozen_until_reset_or_restore():
    backend = pendulum(2, max_episode_steps=3)
    backend.reset(0)
    start = backend.snapshot([0])
    for _ in range(3):
        result = backend.step(torch.ones(2, 1))
    assert result.truncated.all() and not result.terminated.any()
    frozen = backend.step(torch.ones(2, 1))
    assert torch.equal(frozen.observation, result.observation) and (frozen.reward == 0).all()
    assert frozen.truncated.all() and torch.equal(frozen.info["return_so_far"], result.info["return_so_far"])
    backend.restore(start, [0])
    backend.reset(1, [1])
    assert not backend.step(torch.ones(2, 1)).truncated.any()


# --- snapshots --------------------------------------------------------------------------------------------------


def test_state_codec_round_trip_keeps_types_and_dtypes():
    states = [{"a": np.array([1.5, -2.0]), "b": np.float32(0.25), "c": None, "d": 7, "e": True, "f": 0.1},
              {"a": np.array([3.0, 4.0], np.float32), "b": None, "c": np.int32(-3), "d": 2**40, "e": False, "f": 2.0}]
    tensors = encode_state(states)
    for row, state in enumerate(states):
        decoded = decode_state(tensors, row)
        for name, value in state.items():
            assert type(decoded[name]) is type(value), name
            if isinstance(value, np.ndarray):
                assert decoded[name].dtype == value.dtype and np.array_equal(decoded[name], value)
            else:
                assert decoded[name] == value
    generator = np.random.default_rng(123)
    generator.integers(0, 10, 5)
    words = encode_rng(generator)
    assert all(isinstance(w, int) and 0 <= w < 2**32 for w in words)
    assert decode_rng(words) == generator.bit_generator.state


def test_state_snapshots_are_plain_tensors():
    backend = pendulum(2)
    backend.reset(0)
    snapshot = backend.snapshot()
    assert snapshot.meta == {} and all(isinstance(t, torch.Tensor) for t in snapshot.tensors.values())
    restored = Snapshot.from_bytes(snapshot.to_bytes())
    assert torch.equal(pendulum(2).restore(restored), backend.observe())


CONTRACT_CASES = {
    "pendulum-state": contract_backend("Pendulum-v1"),
    "mountain-car-state": contract_backend("MountainCarContinuous-v0"),  # float64 -> float32 state on the first step
    "drift-get-state": contract_backend("GymBackendTest/Drift-v0"),
    "pendulum-deepcopy": contract_backend("Pendulum-v1", snapshot="deepcopy"),
}


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_snapshot_contract(name):
    check_snapshot_contract(CONTRACT_CASES[name], seed=2)  # bit-exact (atol=0)


def test_checker_catches_a_snapshot_without_the_random_generator(monkeypatch):
    fresh_generator = np.random.default_rng(0).bit_generator.state
    monkeypatch.setattr(gym_backend, "decode_rng", lambda words: fresh_generator)
    with pytest.raises(ContractError, match="replay after restore"):
        check_snapshot_contract(contract_backend("GymBackendTest/Drift-v0"))  # its steps draw noise


def test_env_that_cannot_be_copied_is_refused_with_the_reason():
    with pytest.raises(BackendError, match=r"'GymBackendTest/Locked-v0' cannot be snapshotted: .*no get_state.*"
                                           r"copy.deepcopy failed \(TypeError"):
        GymBackend(GymConfig(id="GymBackendTest/Locked-v0"))
    with pytest.raises(BackendError, match="env.snapshot=state, but .*no get_state"):
        GymBackend(GymConfig(id="GymBackendTest/Locked-v0", snapshot="state"))


def test_deepcopy_snapshots_stay_in_their_process(monkeypatch):
    backend = pendulum(2, snapshot="deepcopy")
    backend.reset(0)
    snapshot = Snapshot.from_bytes(backend.snapshot([0]).to_bytes())
    assert set(snapshot.meta) == {"process"} and snapshot.tensors["copy_id"].dtype == torch.long
    backend.restore(snapshot, [1])  # same process: fine
    travelled = Snapshot(snapshot.backend, snapshot.signature, 1, snapshot.tensors, {"process": "4242-elsewhere"})
    with pytest.raises(BackendError, match="taken in another process .*cannot be restored elsewhere"):
        backend.restore(travelled, [1])
    monkeypatch.setattr(gym_backend._COPIES, "capacity", 2)
    first = backend.snapshot([0])
    backend.snapshot([0, 1])  # two newer copies push the first one out
    with pytest.raises(BackendError, match="was dropped.*raise env.snapshot_cache_size"):
        backend.restore(first, [0])


@pytest.mark.slow
def test_deepcopy_snapshot_is_refused_by_another_process(tmp_path):
    backend = pendulum(1, snapshot="deepcopy")
    backend.reset(0)
    (tmp_path / "snapshot.bin").write_bytes(backend.snapshot().to_bytes())
    script = ("import sys; from pathlib import Path; from envs.api import Snapshot, BackendError\n"
              "from envs.gym_backend import GymBackend, GymConfig\n"
              "backend = GymBackend(GymConfig(num_worlds=1, snapshot='deepcopy'))\n"
              "try:\n    backend.restore(Snapshot.from_bytes(Path(sys.argv[1]).read_bytes()))\n"
              "except BackendError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "snapshot.bin")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "taken in another process" in done.stdout, done.stderr[-2000:]


def test_snapshot_of_another_env_is_refused():
    snapshot = pendulum(1).snapshot()
    with pytest.raises(BackendError, match="another env id"):
        GymBackend(GymConfig(id="MountainCarContinuous-v0", num_worlds=1)).restore(snapshot)
    with pytest.raises(BackendError, match="one target world per snapshot world"):
        pendulum(2).restore(snapshot, [0, 1])


def test_closed_backend_raises():
    backend = pendulum(1)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="is closed"):
        backend.step(torch.zeros(1, 1))


# --- GRPO on a gymnasium env -----------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from threads, and two threads crawl when other processes load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pendulum_train_config(tmp_path, **grpo):
    from grpo.config import train_config_from_dict

    return train_config_from_dict({
        "run_name": "gym", "seed": 1, "env": {"backend": "gym", "id": "Pendulum-v1"},
        # no warm start without an expert, so no KL to the random initial policy either
        "grpo": {"iterations": 3, "num_trunks": 2, "group_size": 4, "branch_horizon": 20, "num_minibatches": 2,
                 "beta": 0.0, **grpo},
        "policy": {"hidden_sizes": [32, 32], "action_repeat": 1}, "eval": {"every": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 1000},
        "logger": {"log_dir": str(tmp_path / "runs"), "tensorboard": False, "wandb": {"mode": "disabled"},
                   "picture_every": 0, "progress_bar": False}})


def test_trainer_branches_a_gym_env(tmp_path, one_thread):
    from grpo.trainer import Trainer

    trainer = Trainer(pendulum_train_config(tmp_path))
    assert trainer.policy.actions.kind == "box" and trainer.policy.actions.low == (-2.0,)
    trainer.begin()
    try:
        for _ in range(2):
            metrics = trainer.train_iteration()
    finally:
        trainer.finish()
    assert metrics["updates/applied"] > 0 and np.isfinite(metrics["policy_loss"])
    assert metrics["branch/return_mean"] < 0  # Pendulum's costs


def test_horizon_must_be_shorter_than_the_episode_limit(tmp_path):
    with pytest.raises(ConfigError, match="branch_horizon=200 must be shorter than the episode limit "
                                          "env.max_episode_steps=200"):
        pendulum_train_config(tmp_path, branch_horizon=200)


def mean_return(policy, episodes: int = 16, steps: int = 100) -> float:
    """The deterministic policy's mean return over fixed held-out Pendulum episodes."""
    backend = pendulum(episodes, split="eval")
    observation, total = backend.reset(list(range(episodes))), torch.zeros(episodes)
    for _ in range(steps):
        _, action, _ = policy.act(observation, deterministic=True)
        result = backend.step(action)
        observation, total = result.observation, total + result.reward
    backend.close()
    return total.mean().item()


def test_short_grpo_run_improves_pendulum(tmp_path, one_thread):
    from grpo.trainer import Trainer

    iterations = 15
    config = pendulum_train_config(tmp_path, iterations=iterations + 1, num_trunks=8, group_size=8,
                                   num_minibatches=4, learning_rate=1e-2, selection="random")
    trainer = Trainer(config)
    before = mean_return(trainer.policy)
    trainer.begin()
    try:
        for _ in range(iterations):
            trainer.train_iteration()
    finally:
        trainer.finish()
    after = mean_return(trainer.policy)
    # The untrained policy's mode applies almost no torque (about -675 over 100 steps); 15 iterations gained
    # 85 to 160 over seeds 1 to 3.
    assert after > before + 50, (before, after)


def test_train_py_runs_on_pendulum(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "env=gym", "env.id=Pendulum-v1", "policy.action_repeat=1",
               "grpo.iterations=3",
               "grpo.num_trunks=2", "grpo.group_size=4", "grpo.branch_horizon=20", "grpo.num_minibatches=2",
               "eval.every=0", "logger.wandb.mode=disabled", "logger.picture_every=0", "run_name=pendulum",
               "logger.progress_bar=false", f"checkpoint.dir={tmp_path / 'ckpt'}",
               f"logger.log_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ckpt" / "pendulum" / "last.pt").exists()
