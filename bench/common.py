"""What the training benchmarks share: the config composed as ``train.py`` composes it, and the machine record.

The benchmarks run as scripts (``python bench/<name>.py``), so they import this module as ``common``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grpo.config import TrainConfig, train_config_from_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def train_config(overrides: list[str], *, before: list[str] = (), after: list[str] = ()) -> TrainConfig:
    """The training config of conf/config.yaml with Hydra overrides: ``before`` (the benchmark's defaults, which
    the user's ``overrides`` may change), then ``overrides``, then ``after`` (what the benchmark fixes)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*before, *overrides, *after])
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return train_config_from_dict(data)


def machine(device: str) -> dict:
    """Where a figure was measured: platform, CPU threads, torch, and the GPU when one is used."""
    return {"platform": platform.platform(), "processor": platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": device,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
