"""The GRPO trainer. ``Trainer.train`` is the loop; ``train_iteration`` reads in the order of the algorithm:

    trunks -> snapshot (branch point) -> branches -> returns -> group advantages -> selection -> update -> log
    -> evaluate -> checkpoint

each phase under a timer. Everything the loop needs is built in ``__init__`` from a TrainConfig.
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from envs.factory import build_backend
from envs.seeding import mix
from envs.typed_config import ConfigError
from grpo.advantages import group_advantages
from grpo.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_resume_config,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from grpo.config import TrainConfig
from grpo.distributions import action_mapping_for
from grpo.evaluation import EvalResult, evaluate_policy
from grpo.loss import grpo_loss
from grpo.policy import build_policy, decision_steps
from grpo.pretrain import warm_start
from grpo.progress import Interrupted
from grpo.rollout import BranchBatch, BranchingRollout, discounted_returns, select_branches
from grpo.run_logger import RunLogger

PRETRAIN_SEED_STREAM = 0xB0C
"""Mixed with the run's seed and an index into the warm start's episode seeds (envs.seeding.mix)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the backend returned non-finite rewards); the last checkpoint is kept."""


def seed_everything(seed: int, deterministic: bool) -> None:
    """The one seeding function: python, numpy and torch global generators, and deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def learning_rate_factor(iteration: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``iteration`` (linear warm-up, then the schedule)."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"lr_schedule must be 'constant', 'linear' or 'cosine', got {schedule!r}")


def check_machine(config: TrainConfig) -> None:
    """What the config cannot check alone, checked before any work: the devices exist on this machine, and the
    checkpoint and log folders can be written (a read-only folder otherwise fails after minutes of training)."""
    devices = {"device": config.device}
    devices["env.device"] = config.env.backend_config.device
    for key, name in devices.items():
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ConfigError(f"{key}={name} is not a device ({error}); use cpu, cuda or cuda:N") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
                raise ConfigError(f"{key}={name}, but this machine has no CUDA device (torch {torch.__version__}, "
                                  f"{build}): use {key}=cpu")
            if device.index is not None and device.index >= count:
                raise ConfigError(f"{key}={name}, but this machine has {count} CUDA device(s): use cuda:0 to "
                                  f"cuda:{count - 1}")
    for key, folder in (("checkpoint.dir", Path(config.checkpoint.dir) / config.run_name),
                        ("logger.log_dir", Path(config.logger.log_dir) / config.run_name)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write_test_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError(f"{key}: cannot write to {folder} ({error.strerror or error}); choose a writable "
                              f"folder, e.g. {key}=/tmp/{key.split('.')[0]}s") from None


class Trainer:
    def __init__(self, config: TrainConfig):
        check_machine(config)
        self.config = config
        grpo = config.grpo
        seed_everything(config.seed, config.deterministic)
        if config.num_threads is not None:  # small policies on a CPU: extra threads only wait on each other
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        self.backend = build_backend(config.env, num_worlds=config.env.capacity(grpo.num_trunks * grpo.group_size))
        self.policy = build_policy(self.backend.observation_size, config.policy,
                                   action_mapping_for(self.backend)).to(self.device)
        self.reference = None
        if grpo.reference != "none":
            self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=grpo.learning_rate, eps=grpo.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: learning_rate_factor(
            i, grpo.iterations, grpo.warmup_iterations, grpo.lr_schedule))
        # Separate generators: action sampling and minibatch order are reproducible and checkpointed.
        self.sample_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 2)
        self.rollout = BranchingRollout(self.backend, self.policy, grpo, seed=config.seed, device=self.device,
                                        generator=self.sample_generator)
        self.checkpoints = CheckpointManager(Path(config.checkpoint.dir) / config.run_name,
                                             config.checkpoint.keep_last)
        self.iteration = 0
        self.best_score = -math.inf
        self.counters: dict[str, float] = defaultdict(float)  # skipped updates, episodes, ...
        self.loss_config = grpo.loss_config(len(decision_steps(self.policy.action_repeat, grpo.trained_steps)))
        self.logger: RunLogger | None = None
        self.last_evaluation: EvalResult | None = None
        self.stop_requested = False  # set by SIGINT / SIGTERM during train(): stop at the next safe point

    # --- the loop -----------------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Run (or resume) training to ``grpo.iterations``; returns the last iteration's metrics.

        SIGINT (Ctrl-C) or SIGTERM asks it to stop at the next safe point: after the current iteration it
        writes ``last.pt`` and raises :class:`~grpo.progress.Interrupted` (during the warm start it stops
        within a step, with nothing to resume yet). A second signal stops at once. The backend (and every
        service process) is closed either way."""
        metrics: dict[str, float] = {}
        progress = None
        try:
            with _stop_on_signal(self):
                self.begin()
                progress = self._progress_bar()
                while self.iteration < self.config.grpo.iterations:
                    metrics = self.train_iteration()
                    if progress is not None:  # the figures shown belong to the iteration just counted
                        progress.set_postfix(_key_figures(metrics, self.backend.spec.driving), refresh=False)
                        progress.update(1)
                    if self.stop_requested:
                        raise Interrupted(save_checkpoint(self.state_dict(), self.checkpoints.last), self.iteration)
        finally:
            if progress is not None:
                progress.close()
            self.finish()
        return metrics

    def begin(self) -> None:
        """Resume from a checkpoint (``resume``) or start every trunk's first episode; open the logs."""
        resume_from = find_resume_checkpoint(self.config.resume, self.config.checkpoint.dir, self.config.run_name,
                                             self.config.to_dict())
        pretrain_metrics: dict[str, float] = {}
        if resume_from is not None:
            self.load(resume_from)
            print(f"resumed from {resume_from} at iteration {self.iteration}")
        else:
            pretrain_metrics = self.pretrain()
            self.rollout.start()
            if pretrain_metrics:  # the clone is minutes of work: never lose it
                path = save_checkpoint(self.state_dict(), self.checkpoints.last)
                print(f"pretrain: the clone is saved in {path} (resume=auto starts GRPO from it)", flush=True)
        self.logger = RunLogger(self.config.logger, self.config.run_name, self.config.to_dict())
        for notice in self.logger.notices:
            print(notice)
        if pretrain_metrics:
            self.logger.log(pretrain_metrics, 0)

    def pretrain(self) -> dict[str, float]:
        """Behaviour cloning of the expert before a fresh run's first iteration (grpo/pretrain.py); the frozen
        reference policy is the cloned one. Skipped (returns {}) when off, for non-driving backends (no
        expert) and for raster policies (demonstrations hold vectors only)."""
        config = self.config.pretrain
        if config.updates == 0:
            return {}
        if self.policy.actions.kind != "driving" or self.policy.uses_raster:
            anchored = self.reference is not None and self.config.grpo.beta > 0
            anchor = (f"; grpo.beta={self.config.grpo.beta} holds GRPO near the random initial policy (set "
                      "grpo.beta=0 to free it)" if anchored else "")
            print(f"pretrain: skipped (the expert drives only the vector observation of a driving backend){anchor}")
            return {}
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.config.seed + 3)
        seeds = mix(self.config.seed, torch.arange(1_000_000), PRETRAIN_SEED_STREAM).tolist()
        metrics = warm_start(self.policy, self.backend, config, seeds, generator,
                             report=lambda line: print(line, flush=True), should_stop=lambda: self.stop_requested)
        if self.reference is not None:
            self.reference.load_state_dict(self.policy.state_dict())
        metrics["time/pretrain_s"] = time.perf_counter() - start
        print(f"pretrain: cloned the expert on {metrics['pretrain/samples']:,.0f} samples in "
              f"{metrics['time/pretrain_s']:.0f} s (nll {metrics['pretrain/nll']:.2f}, "
              f"mode error {metrics['pretrain/mode_error']:.3f})", flush=True)
        return metrics

    def finish(self) -> None:
        """Close the logs and the backend."""
        if self.logger is not None:
            self.logger.close()
        self.backend.close()

    def train_iteration(self) -> dict[str, float]:
        grpo, timers = self.config.grpo, {}
        self.policy.eval()
        with timed(timers, "trunks"):
            self.counters["episodes/started"] += self.rollout.restart_ended_trunks()
            self.rollout.drive_trunks(grpo.trunk_steps)
        with timed(timers, "branch"):  # snapshot -> branches (restored from each trunk's snapshot)
            # due by the iteration this one completes, as the evaluation is: both land on the same logged step
            picture_due = _due(self.iteration + 1, self.config.logger.picture_every)
            batch = self.rollout.drive_branches(record_positions=picture_due)
        with timed(timers, "advantages"):
            returns = discounted_returns(batch.rewards, grpo.discount)
            # A group with a branch on a service that failed is dropped whole; its trunk branches again.
            dropped = batch.failed.view(-1, grpo.group_size).any(dim=1)
            self.counters["groups/dropped_service_failure"] += int(dropped.sum())
            if dropped.any():  # beside the service layer's line per restart (envs/services/multi.py)
                print(f"iteration {self.iteration + 1}: dropped {int(dropped.sum())} groups whose service failed "
                      f"({self.counters['groups/dropped_service_failure']:.0f} so far)", file=sys.stderr, flush=True)
            returns = torch.where(dropped.repeat_interleave(grpo.group_size), 0.0, returns)
            if not torch.isfinite(returns).all():
                self._stop_on_bad_returns(returns, batch.group_id)
            advantages, keep, advantage_metrics = group_advantages(
                returns, batch.group_id, group_size=grpo.group_size, scaling=grpo.advantage_scaling,
                std_floor=grpo.std_floor, zero_std_groups=grpo.zero_std_groups)
            keep &= ~dropped.repeat_interleave(grpo.group_size)
        with timed(timers, "selection"):
            chosen = select_branches(returns, grpo.group_size, grpo.selection, grpo.selection_temperature,
                                     self.shuffle_generator)
            self.rollout.continue_from(chosen, dropped)
        with timed(timers, "update"):
            self.policy.train()
            update_metrics = self.update(batch, advantages.to(self.device), keep.to(self.device))
            self.scheduler.step()
        self.iteration += 1
        if self.reference is not None and grpo.reference == "sync" and self.iteration % grpo.reference_sync_every == 0:
            self.reference.load_state_dict(self.policy.state_dict())

        metrics = {**advantage_metrics, **update_metrics, **self._branch_metrics(batch, returns, chosen)}
        with timed(timers, "eval"):
            every = self.config.eval.every
            if _due(self.iteration, every) or (every > 0 and self.iteration == grpo.iterations):
                metrics.update(self.evaluate())
        metrics.update({f"time/{name}_s": seconds for name, seconds in timers.items()})
        steps = (grpo.trunk_steps + grpo.branch_horizon * grpo.group_size) * grpo.num_trunks
        metrics["perf/env_steps_per_s"] = steps / max(timers["trunks"] + timers["branch"], 1e-9)
        metrics["perf/waves"] = float(self.rollout.num_waves)
        metrics.update(self.backend.metrics())  # services/restarts; CARLA: restore errors and drift/*
        metrics["env_steps"] = float(self.rollout.env_steps)
        metrics.update({name: float(value) for name, value in self.counters.items()})
        if _due(self.iteration, self.config.logger.log_every):
            self.logger.log(metrics, self.iteration)
        if picture_due:
            self._log_group_picture(batch, returns)
        with timed(timers, "checkpoint"):
            if _due(self.iteration, self.config.checkpoint.every) or self.iteration == grpo.iterations:
                state = self.state_dict()
                save_checkpoint(state, self.checkpoints.last)
                self.checkpoints.save_periodic(state, self.iteration)
        return metrics

    # --- update -----------------------------------------------------------------------------------------------

    def update(self, batch: BranchBatch, advantages: Tensor, keep: Tensor) -> dict[str, float]:
        """``num_epochs`` passes of minibatch updates; each minibatch holds whole branches (so per-branch
        aggregation and the branch-level ratio are exact). Non-finite gradients skip the step."""
        grpo = self.config.grpo
        steps, num_branches = batch.log_probs.shape
        branch_id = torch.arange(num_branches, device=self.device).expand(steps, -1)
        valid = batch.valid & keep[None, :]
        decided = batch.decided[:, None, :].expand(-1, num_branches, -1)  # [S, N, k]: dimensions sampled
        reference_log_probs = reference_kl = None
        with torch.no_grad():  # the policy's inputs, encoded once for every epoch (the reference's are the same);
            # in chunks, so the derived inputs' intermediates stay small at GPU scale (millions of decisions)
            inputs = torch.cat([self.policy.encode(chunk) for chunk in batch.observations.flatten(0, 1).split(1 << 17)]
                               ).view(steps, num_branches, -1)
        rasters = batch.rasters  # [S, N, C, P, P] for a policy that reads them, else None

        def minibatch_rasters(columns: Tensor | None = None) -> Tensor | None:
            if rasters is None:
                return None
            return (rasters if columns is None else rasters[:, columns]).flatten(0, 1)

        if self.reference is not None:
            with torch.no_grad():
                reference_dist = self.reference.distribution(inputs.flatten(0, 1), minibatch_rasters())
                reference_log_probs = reference_dist.log_prob(batch.raw_actions.flatten(0, 1),
                                                              decided.flatten(0, 1)).view(steps, -1)
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        per_minibatch = num_branches // grpo.num_minibatches
        for _ in range(grpo.num_epochs):
            order = torch.randperm(num_branches, generator=self.shuffle_generator).to(self.device)
            for start in range(0, num_branches, per_minibatch):
                columns = order[start:start + per_minibatch]
                mask = valid[:, columns].flatten()
                if not mask.any():
                    continue
                dist = self.policy.distribution(inputs[:, columns].flatten(0, 1), minibatch_rasters(columns))
                raw = batch.raw_actions[:, columns].flatten(0, 1)
                dims = decided[:, columns].flatten(0, 1)
                if self.reference is not None and self.loss_config.kl_estimator == "analytic":
                    with torch.no_grad():
                        reference_dist = self.reference.distribution(inputs[:, columns].flatten(0, 1),
                                                                     minibatch_rasters(columns))
                    reference_kl = dist.kl(reference_dist, dims)
                loss, loss_metrics = grpo_loss(
                    dist.log_prob(raw, dims), batch.log_probs[:, columns].flatten(),
                    advantages[columns].expand(steps, -1).flatten(), branch_id[:, columns].flatten(),
                    self.loss_config, entropy=dist.entropy(dims),
                    logp_ref=None if reference_log_probs is None else reference_log_probs[:, columns].flatten(),
                    kl_analytic=reference_kl, mask=mask, num_branches=len(columns))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), grpo.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.counters["updates/skipped"] += 1
                    continue
                self.optimizer.step()
                updates += 1
                sums["grad_norm"] += grad_norm.item()
                for name, value in loss_metrics.items():
                    sums[name] += float(value)
        metrics = {name: value / max(updates, 1) for name, value in sums.items()}
        metrics["updates/applied"] = float(updates)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    # --- evaluation, metrics, pictures --------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Periodic evaluation on the held-out routes (env=gym: evaluation episodes); best.pt follows its driving
        score (env=gym: its mean return)."""
        self.policy.eval()
        in_place = self.backend if self.backend.spec.evaluates_in_place else None  # CARLA's servers
        result = evaluate_policy(self.policy, self.config.env, self.config.eval, self.device, backend=in_place)
        self.last_evaluation = result  # per-route records, for reports and benchmarks
        # best.pt follows the driving score; a gymnasium env (env=gym) has no route, so its episode return
        score = result.metrics["eval/driving_score" if self.policy.actions.kind == "driving" else "eval/return"]
        if score > self.best_score:
            self.best_score = score
            save_checkpoint(self.state_dict(), self.checkpoints.best)
        result.metrics["eval/best_driving_score"] = self.best_score
        return result.metrics

    def _branch_metrics(self, batch: BranchBatch, returns: Tensor, chosen: Tensor) -> dict[str, float]:
        grpo = self.config.grpo
        grouped = returns.view(-1, grpo.group_size)
        chosen_returns = grouped.gather(1, chosen.view(-1, 1).to(grouped.device)).squeeze(1)
        rank = (grouped > chosen_returns[:, None]).sum(1).double()  # 0 = the best branch was chosen
        metrics = {
            "selection/chosen_return": chosen_returns.mean().item(),
            "selection/chosen_is_best": (rank == 0).double().mean().item(),
            "selection/chosen_rank": rank.mean().item(),
            "branch/return_mean": returns.mean().item(),
            "branch/steps_valid_frac": batch.valid.float().mean().item(),
        }
        for name, values in batch.info.items():
            metrics[f"branch/{name}"] = values.float().mean().item()
        return metrics

    def _log_group_picture(self, batch: BranchBatch, returns: Tensor) -> None:
        """The G branches of trunk 0 on one bird's-eye image, each labelled with its return."""
        if batch.positions is None:  # not asked for, or a backend without pictures
            return
        from grpo.pictures import group_picture

        image = group_picture(self.backend, batch.positions, returns[: self.config.grpo.group_size])
        self.logger.log_image("pictures/group", image, self.iteration,
                              caption=f"iteration {self.iteration}: {self.config.grpo.group_size} branches")

    def _stop_on_bad_returns(self, returns: Tensor, group_id: Tensor) -> None:
        bad = sorted(set(group_id[~torch.isfinite(returns)].tolist()))
        saved = save_checkpoint(self.state_dict(), self.checkpoints.last)
        raise TrainingError(f"the backend returned non-finite rewards in groups {bad[:8]} at iteration "
                            f"{self.iteration}; state before this iteration saved to {saved}; check the reward "
                            "weights in env.reward and the backend's step()")

    # --- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "best_score": self.best_score,
            "counters": dict(self.counters),
            "policy": self.policy.state_dict(),
            "reference": None if self.reference is None else self.reference.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"sample": self.sample_generator.get_state(), "shuffle": self.shuffle_generator.get_state(),
                    "torch": torch.get_rng_state()},
            "rollout": self.rollout.state_dict(),
            "observation_size": self.backend.observation_size,
        }

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        for notice in check_resume_config(state, self.config.to_dict(), path):
            print(notice)
        if state.get("observation_size") != self.backend.observation_size:
            raise CheckpointError(f"{path} was trained on observations of size {state.get('observation_size')}, "
                                  f"this environment gives {self.backend.observation_size}")
        try:
            self.policy.load_state_dict(state["policy"])
            if self.reference is not None and state["reference"] is not None:
                self.reference.load_state_dict(state["reference"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"{path} does not fit this run's policy/optimiser config "
                                  f"({str(error).splitlines()[0][:200]})") from error
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        self.counters = defaultdict(float, state["counters"])
        self.sample_generator.set_state(state["rng"]["sample"].cpu() if self.device.type == "cpu"
                                        else state["rng"]["sample"])
        self.shuffle_generator.set_state(state["rng"]["shuffle"].cpu())
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.rollout.load_state_dict(state["rollout"])

    def _progress_bar(self):
        if not self.config.logger.progress_bar:
            return None
        from tqdm import tqdm

        return tqdm(total=self.config.grpo.iterations, initial=self.iteration, desc="GRPO", unit="it",
                    dynamic_ncols=True)


@contextmanager
def _stop_on_signal(trainer: Trainer):
    """While training: the first SIGINT / SIGTERM sets ``trainer.stop_requested`` (the loop stops at its next
    safe point), a second one raises KeyboardInterrupt at once. Signal handlers can only be set from the main
    thread; elsewhere (a trainer driven from another thread) signals keep their default behaviour."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print(f"\n{signal.Signals(signum).name}: stopping at the next safe point and saving last.pt "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def timed(timers: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timers[name] = timers.get(name, 0.0) + time.perf_counter() - start


def _due(iteration: int, every: int) -> bool:
    return every > 0 and iteration > 0 and iteration % every == 0


def _key_figures(metrics: dict[str, float], driving: bool = True) -> dict[str, str]:
    """The progress bar's figures: reward, the evaluation's driving score (a Box env's mean return: it has no
    routes), KL, throughput, and service failures once there are any."""
    evaluation = {"eval/driving_score": "DS"} if driving else {"eval/return": "eval_return"}
    keys = {"reward/mean": "R", **evaluation, "kl": "kl", "perf/env_steps_per_s": "sps"}
    figures = {short: f"{metrics[name]:.3g}" for name, short in keys.items() if name in metrics}
    for name, short in (("services/restarts", "restarts"), ("groups/dropped_service_failure", "dropped")):
        if metrics.get(name):  # shown once a service has failed
            figures[short] = f"{metrics[name]:.0f}"
    return figures
