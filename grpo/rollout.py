"""Snapshot -> branches -> returns -> selection, over any backend that meets envs.api.

Each trunk (an episode in progress) is held as a :class:`~envs.api.Snapshot` between iterations. A branch
*job* is (trunk t, branch g), N = T * G jobs per iteration. Jobs run in *waves* of at most ``capacity``
worlds (all worlds of the backend, possibly spread over several services): a wave restores each job's
trunk snapshot into a world, drives ``branch_horizon`` steps with the policy's own sampled actions, and
snapshots the branch ends. All branches of a trunk therefore start from the same complete world state,
randomness included (common random numbers), even when they run in different waves or services. A branch
that ends stays frozen and earns nothing more (the backend contract). Selection makes the chosen branch's
end state the trunk's new snapshot; trunk steps between branch points drive the trunk snapshots likewise.

When the backend holds at least N worlds (the default), everything runs in one wave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from envs.api import Backend, BackendError, ServiceFailure, Snapshot
from envs.seeding import mix
from grpo.config import GRPOConfig
from grpo.policy import CNNPolicy, EntityPolicy, HeldActions, MLPPolicy, decision_steps

TRUNK_SEED_STREAM = 0x7A1
"""Mixed with the run's seed and the episode's index into a trunk episode's seed (envs.seeding.mix)."""


@dataclass
class BranchBatch:
    """One iteration's branches. H = branch horizon, S = trained decisions (the steps among the first trained
    ones at which the policy sampled some action dimension), N = T * G branches, job n = t * G + g."""

    observations: Tensor  # [S, N, obs_size], on the policy's device
    raw_actions: Tensor  # [S, N, action_dim] the policy's own action space
    log_probs: Tensor  # [S, N] log-probabilities under the policy that acted
    valid: Tensor  # [S, N] bool: the branch had not ended before this decision
    rewards: Tensor  # [H, N] float32 (0 after a branch ended)
    group_id: Tensor  # [N] long: the trunk each branch belongs to
    failed: Tensor  # [N] bool: the branch's service failed (its whole group is dropped)
    decided: Tensor  # [S, action_dim] bool: the action dimensions sampled afresh at each trained decision
    info: dict[str, Tensor] = field(default_factory=dict)  # per-branch summaries, [N]
    positions: Tensor | None = None  # [H + 1, G, 2] ego positions of trunk 0's branches, for pictures (a backend
    # whose spec offers pictures)
    rasters: Tensor | None = None  # [S, N, C, P, P] uint8 bird's-eye rasters, for a policy that reads them


def discounted_returns(rewards: Tensor, discount: float) -> Tensor:
    """Branch returns [N] (float64) from per-step rewards [H, N]: sum_h discount^h r_h."""
    weights = discount ** torch.arange(rewards.shape[0], dtype=torch.float64, device=rewards.device)
    return (rewards.double() * weights[:, None]).sum(0)


def select_branches(returns: Tensor, group_size: int, rule: str, temperature: float,
                    generator: torch.Generator) -> Tensor:
    """Index (0..G-1) of the branch each group continues from, [T]. ``softmax`` samples with probabilities
    from the group-normalised returns / temperature, so better branches are likelier but not certain."""
    grouped = returns.view(-1, group_size).double().cpu()
    if rule == "best":
        return grouped.argmax(dim=1)
    if rule == "random":
        return torch.randint(0, group_size, (grouped.shape[0],), generator=generator)
    if rule == "softmax":
        normalised = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-8)
        probabilities = torch.softmax(normalised / temperature, dim=1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    raise ValueError(f"selection must be 'best', 'random' or 'softmax', got {rule!r}")


def waves(count: int, capacity: int) -> list[Tensor]:
    """Job indices 0..count-1 split into consecutive waves of at most ``capacity``."""
    return list(torch.arange(count).split(capacity))


class BranchingRollout:
    """Drives the trunks and their branches on one backend; the trainer calls the phases in order."""

    def __init__(self, backend: Backend, policy: MLPPolicy | CNNPolicy | EntityPolicy, config: GRPOConfig, *,
                 seed: int, device: torch.device, generator: torch.Generator):
        if policy.uses_raster and not backend.spec.rasters:
            raise BackendError(f"policy.kind={policy.config.kind} reads the bird's-eye raster, which this backend "
                               f"({backend.spec.kind}) does not render: use env=sim or env=carla, or policy=mlp")
        self.backend, self.policy, self.config = backend, policy, config
        self.device, self.generator, self.seed = device, generator, seed
        self.capacity = backend.num_worlds
        self.group_id = torch.arange(config.num_trunks).repeat_interleave(config.group_size)
        self.episodes_started = 0  # trunk episodes begun so far: the next episode seed's index
        self.env_steps = 0
        self.trunks: Snapshot | None = None  # [T] the state of every trunk between iterations
        self.trunk_done = torch.zeros(config.num_trunks, dtype=torch.bool)
        self._branch_ends: Snapshot | None = None
        self._branch_done = torch.zeros(len(self.group_id), dtype=torch.bool)

    @property
    def num_waves(self) -> int:
        return len(waves(len(self.group_id), self.capacity))

    # --- trunks -----------------------------------------------------------------------------------------

    def _episode_seeds(self, count: int) -> list[int]:
        """Fresh, reproducible episode seeds for ``count`` new trunk episodes (training seed range)."""
        index = torch.arange(self.episodes_started, self.episodes_started + count)
        self.episodes_started += count
        return mix(self.seed, index, TRUNK_SEED_STREAM).tolist()

    def _new_episodes(self, count: int) -> Snapshot:
        parts = []
        for wave in waves(count, self.capacity):
            worlds = torch.arange(len(wave))
            seeds = self._episode_seeds(len(wave))
            try:
                self.backend.reset(seeds, worlds)
                parts.append(self.backend.snapshot(worlds))
            except ServiceFailure:  # a service died between the two calls (it is restarted): once more
                self.backend.reset(seeds, worlds)
                parts.append(self.backend.snapshot(worlds))
        return Snapshot.concat(parts)

    def start(self) -> None:
        """Begin an episode on every trunk. Every world is reset once first, so worlds left idle by a
        partial wave still hold a valid (if unused) episode when the backend steps them."""
        self.backend.reset(self.seed)
        self.trunks = self._new_episodes(self.config.num_trunks)
        self.trunk_done.zero_()

    def restart_ended_trunks(self) -> int:
        """Start a new episode on every trunk whose episode has ended; returns how many."""
        ended = self.trunk_done.nonzero().flatten()
        if len(ended) == 0:
            return 0
        fresh = self._new_episodes(len(ended))
        order = torch.arange(self.config.num_trunks)
        order[ended] = self.config.num_trunks + torch.arange(len(ended))  # index into [trunks, fresh]
        self.trunks = Snapshot.concat([self.trunks, fresh]).select(order)
        self.trunk_done[ended] = False
        return len(ended)

    @torch.no_grad()
    def drive_trunks(self, steps: int) -> None:
        """Single-mode steps between branch points, with the policy's sampled actions (not trained on)."""
        if steps == 0:
            return
        parts = []
        for wave in waves(self.config.num_trunks, self.capacity):
            worlds = torch.arange(len(wave))
            obs = self._restore(self.trunks.select(wave), worlds)
            done = self.trunk_done[wave].clone()
            held = HeldActions(self.policy)
            for step in range(steps):
                _, control, _ = held.act(obs.to(self.device), step, raster=self._raster(len(wave)),
                                         generator=self.generator)
                result, failed = self._step(control, len(wave))
                obs = result.observation[: len(wave)]
                done |= (result.terminated | result.truncated)[: len(wave)].cpu() | failed
            try:
                parts.append(self.backend.snapshot(worlds))
            except ServiceFailure:  # the trunks' new states are lost: they continue from where they were
                parts.append(self.trunks.select(wave))
                continue
            self.trunk_done[wave] = done
        self.trunks = Snapshot.concat(parts)

    # --- snapshot -> branches ------------------------------------------------------------------------------

    @torch.no_grad()
    def drive_branches(self, record_positions: bool = False) -> BranchBatch:
        """Every branch of every trunk restored from its trunk's snapshot and driven ``branch_horizon`` steps
        with its own sampled actions, in waves of at most ``capacity`` worlds."""
        config = self.config
        horizon, trained, jobs = config.branch_horizon, config.trained_steps, len(self.group_id)
        batch: dict[str, list] = {"obs": [], "raw": [], "logp": [], "valid": [], "rewards": [], "raster": []}
        failed = torch.zeros(jobs, dtype=torch.bool)
        done = torch.zeros(jobs, dtype=torch.bool)
        events: dict[str, Tensor] = {}
        speed_sum: Tensor | None = None  # filled only when the backend reports speed / route completion
        completion: Tensor | None = None
        ends, positions = [], None
        for wave_index, wave in enumerate(waves(jobs, self.capacity)):
            worlds = torch.arange(len(wave))
            starts = self.trunks.select(self.group_id[wave])
            obs = self._restore(starts, worlds)
            wave_done = self.trunk_done[self.group_id[wave]].clone()
            recording = record_positions and wave_index == 0 and self.backend.spec.pictures
            wave_positions = [self._positions(config.group_size)] if recording else None
            columns: dict[str, list] = {key: [] for key in batch}
            held = HeldActions(self.policy)
            for step in range(horizon):
                obs = obs.to(self.device)
                raster = self._raster(len(wave))
                raw, control, log_prob = held.act(obs, step, raster=raster, generator=self.generator)
                if step < trained and log_prob is not None:  # a decision (some dimension sampled afresh)
                    columns["obs"].append(obs)
                    if raster is not None:
                        columns["raster"].append(raster)
                    columns["raw"].append(raw)
                    columns["logp"].append(log_prob)
                    columns["valid"].append((~wave_done).to(self.device))
                result, wave_failed = self._step(control, len(wave))
                failed[wave] |= wave_failed
                columns["rewards"].append(result.reward[: len(wave)].detach().float().cpu())
                for name, value in result.info.items():
                    if value.dtype == torch.bool:
                        events.setdefault(name, torch.zeros(jobs, dtype=torch.bool))[wave] |= value[: len(wave)].cpu()
                if "speed" in result.info:
                    speed_sum = torch.zeros(jobs) if speed_sum is None else speed_sum
                    speed_sum[wave] += result.info["speed"][: len(wave)].detach().float().cpu()
                if "route_completion" in result.info:
                    completion = torch.zeros(jobs) if completion is None else completion
                    completion[wave] = result.info["route_completion"][: len(wave)].detach().float().cpu()
                wave_done |= (result.terminated | result.truncated)[: len(wave)].cpu()
                obs = result.observation[: len(wave)]
                if recording:
                    wave_positions.append(self._positions(config.group_size))
            done[wave] = wave_done
            try:
                ends.append(self.backend.snapshot(worlds))
            except ServiceFailure:  # the wave's end states are lost: drop its groups, keep their trunks
                failed[wave] = True
                ends.append(starts)
            for key, values in columns.items():
                if values:
                    batch[key].append(torch.stack(values))
            if recording:
                positions = torch.stack(wave_positions)
        self._branch_ends = Snapshot.concat(ends)
        self._branch_done = done | failed
        info = {name: happened.float() for name, happened in events.items()}
        info["ended"] = done.float()
        if speed_sum is not None:
            info["speed"] = speed_sum / horizon
        if completion is not None:
            info["route_completion"] = completion
        return BranchBatch(torch.cat(batch["obs"], 1), torch.cat(batch["raw"], 1), torch.cat(batch["logp"], 1),
                           torch.cat(batch["valid"], 1), torch.cat(batch["rewards"], 1), self.group_id.clone(),
                           failed, decision_steps(self.policy.action_repeat, trained).to(self.device), info,
                           positions, torch.cat(batch["raster"], 1) if batch["raster"] else None)

    # --- selection -------------------------------------------------------------------------------------------------

    def continue_from(self, chosen: Tensor, dropped: Tensor | None = None) -> None:
        """Each trunk continues from its chosen branch's end (``chosen`` [T], an index within the group);
        trunks whose group was ``dropped`` [T] (bool) keep their snapshot and branch again next time."""
        group_size = self.config.group_size
        jobs = torch.arange(self.config.num_trunks) * group_size + chosen.cpu()
        if dropped is not None:
            keep = ~dropped.cpu()
            order = torch.where(keep, jobs, len(self.group_id) + torch.arange(self.config.num_trunks))
            self.trunks = Snapshot.concat([self._branch_ends, self.trunks]).select(order)
            self.trunk_done = torch.where(keep, self._branch_done[jobs], self.trunk_done)
        else:
            self.trunks = self._branch_ends.select(jobs)
            self.trunk_done = self._branch_done[jobs].clone()

    # --- helpers ----------------------------------------------------------------------------------------------------

    def _restore(self, snapshot: Snapshot, worlds: Tensor) -> Tensor:
        """Restore, retrying once: a service that died since the last call has been restarted by then."""
        try:
            return self.backend.restore(snapshot, worlds)
        except ServiceFailure:
            return self.backend.restore(snapshot, worlds)

    def _step(self, control: Tensor, live: int):
        """Step the backend; worlds past ``live`` (idle in a partial wave) get zero controls. Returns the
        result and which of the live worlds' services failed on this step."""
        actions = torch.zeros(self.backend.num_worlds, control.shape[1], device=self.backend.device)
        actions[:live] = control.to(self.backend.device)
        result = self.backend.step(actions)
        self.env_steps += live
        failed = result.info.get("service_failed")
        failed = torch.zeros(live, dtype=torch.bool) if failed is None else failed[:live].cpu()
        return result, failed

    def _raster(self, count: int) -> Tensor | None:
        """Bird's-eye rasters [count, C, P, P] (uint8, on the policy's device) of worlds 0..count-1 for a policy
        that reads them; None for one that does not."""
        if not self.policy.uses_raster:
            return None
        return self.backend.observe_raster(torch.arange(count)).to(self.device)

    def _positions(self, count: int) -> Tensor:
        """Ego positions [count, 2] of worlds 0..count-1 (a backend with pictures)."""
        return self.backend.positions(torch.arange(min(count, self.backend.num_worlds)))

    def state_dict(self) -> dict:
        trunks = self.trunks
        return {"episodes_started": self.episodes_started, "env_steps": self.env_steps,
                "trunk_done": self.trunk_done.clone(),
                "trunks": {"backend": trunks.backend, "signature": trunks.signature,
                           "num_worlds": trunks.num_worlds, "tensors": trunks.tensors, "meta": trunks.meta}}

    def load_state_dict(self, state: dict) -> None:
        self.episodes_started = int(state["episodes_started"])
        self.env_steps = int(state["env_steps"])
        self.trunk_done = state["trunk_done"].cpu().clone()
        self.trunks = Snapshot(**state["trunks"])
