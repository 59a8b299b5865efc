"""Metrics and pictures to TensorBoard and wandb, under flat names (docs/training.md, "Logged metrics").

wandb never stops a run. In ``online`` mode without an API key it logs offline (sync later with
``wandb sync``); if the server cannot be reached within ``init_timeout_s`` it also falls back to offline; any
other wandb failure disables wandb for the run with a one-line notice, and TensorBoard carries on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from grpo.config import LoggerConfig


def wandb_api_key_available() -> bool:
    """An API key in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class RunLogger:
    """Writes scalars and images to every enabled sink."""

    def __init__(self, config: LoggerConfig, run_name: str, run_config: dict[str, Any]):
        self.config = config
        self.notices: list[str] = []
        self.tensorboard = None
        self.wandb_run = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = Path(config.log_dir) / run_name
            self.tensorboard = SummaryWriter(str(self.tensorboard_dir))
        if config.wandb.mode != "disabled":
            self.wandb_run = self._start_wandb(run_name, run_config)

    def _start_wandb(self, run_name: str, run_config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            self.notices.append("wandb is not installed; logging to TensorBoard only")
            return None
        mode = self.config.wandb.mode
        if mode == "online" and not wandb_api_key_available():
            self.notices.append("wandb: no API key found (WANDB_API_KEY or `wandb login`); logging offline, "
                                "upload later with `wandb sync`")
            mode = "offline"
        directory = Path(self.config.log_dir) / run_name
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(init_timeout=self.config.wandb.init_timeout_s, silent=True)
        attempts = [mode] if mode == "offline" else [mode, "offline"]
        for attempt in attempts:
            try:
                return wandb.init(project=self.config.wandb.project, entity=self.config.wandb.entity,
                                  name=run_name, config=run_config, dir=str(directory), mode=attempt,
                                  settings=settings, reinit="finish_previous")
            except Exception as error:  # network errors, timeouts, server refusals: never crash the run
                self.notices.append(f"wandb {attempt} failed ({type(error).__name__}: {str(error)[:120]})"
                                    + ("; trying offline" if attempt == "online" else "; wandb disabled"))
        return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.tensorboard is not None:
            for name, value in metrics.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    def log_image(self, name: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """``image``: uint8 [H, W, 3]."""
        if self.tensorboard is not None:
            self.tensorboard.add_image(name, image, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Image(image, caption=caption)}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
