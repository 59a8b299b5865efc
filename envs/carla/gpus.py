"""CUDA device ids -> the graphics adapters a CARLA server is launched on (``-graphicsadapter=N``).

Users name GPUs as CUDA does: ``env.gpus=[0, 1]`` means what torch calls ``cuda:0`` and ``cuda:1`` in the
trainer's environment. Unreal's ``-graphicsadapter=N`` counts graphics (Vulkan) adapters instead, and the two
orders need not agree:

* CUDA numbers devices fastest first, unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (then by PCI bus id), and
  ``CUDA_VISIBLE_DEVICES`` then picks and reorders them (by index in that order, or by UUID);
* a Vulkan adapter list is not under CUDA's control at all.

The mapping goes through the PCI bus id of each GPU, which ``nvidia-smi --query-gpu=index,pci.bus_id,uuid,name
--format=csv,noheader`` reports: a CUDA id becomes a physical GPU by CUDA's rules above, and that GPU's
adapter is its position in PCI bus order. Two assumptions, stated where a user meets them (docs/carla.md):

* **the graphics adapters are the NVIDIA GPUs, in PCI bus order.** Nothing guarantees it (a software Vulkan
  device, or an onboard graphics chip, may be listed too; the order is the loader's). Where it does not hold,
  ``env.graphics_adapters=[...]`` gives the adapters explicitly and nothing is mapped;
* **with GPUs of one model, CUDA's default (fastest first) order is PCI bus order**: the speed ranking ties
  and CUDA is observed to keep PCI order then, though it does not document the tie-break. With GPUs of several
  models, the ranking cannot be read from nvidia-smi: the mapping refuses and asks for
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (or explicit adapters).

:func:`map_cuda_ids` is the mapping as a pure function of nvidia-smi's table and the two CUDA variables;
:func:`graphics_adapters` adds the override and the call to nvidia-smi (:func:`query_gpus`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from envs.api import BackendError

NVIDIA_SMI = "nvidia-smi"
QUERY = ("--query-gpu=index,pci.bus_id,uuid,name", "--format=csv,noheader")


class GpuMappingError(BackendError):
    """CUDA ids that cannot be mapped to graphics adapters; the one-line message says how to fix it."""


@dataclass(frozen=True)
class Gpu:
    """One row of nvidia-smi's table: its own index, the PCI bus id (``00000000:17:00.0``), UUID and model."""

    index: int
    bus_id: str
    uuid: str
    name: str


def parse_gpu_table(text: str) -> list[Gpu]:
    """The rows of ``nvidia-smi --query-gpu=index,pci.bus_id,uuid,name --format=csv,noheader`` output."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",", 3)]
        if len(fields) != 4 or not fields[0].isdigit() or ":" not in fields[1]:
            raise GpuMappingError(f"cannot read nvidia-smi's line {line.strip()!r} (expected: index, pci.bus_id, "
                                  "uuid, name); set env.graphics_adapters=[...] to give the adapters explicitly")
        gpus.append(Gpu(int(fields[0]), fields[1].upper(), fields[2], fields[3]))
    return gpus


def cuda_order(gpus: Sequence[Gpu], device_order: str | None) -> list[Gpu]:
    """Every GPU in CUDA's numbering before ``CUDA_VISIBLE_DEVICES`` applies (see the module docstring)."""
    by_bus = sorted(gpus, key=lambda gpu: gpu.bus_id)
    if (device_order or "FASTEST_FIRST").strip().upper() == "PCI_BUS_ID" or len({g.name for g in gpus}) <= 1:
        return by_bus
    models = ", ".join(sorted({g.name for g in gpus}))
    raise GpuMappingError(f"this machine mixes GPU models ({models}), so CUDA's default fastest-first numbering of "
                          "env.gpus cannot be read from nvidia-smi: export CUDA_DEVICE_ORDER=PCI_BUS_ID, or set "
                          "env.graphics_adapters=[...] explicitly")


def visible_devices(ordered: Sequence[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs CUDA numbers 0, 1, ... under ``CUDA_VISIBLE_DEVICES`` (None: all of ``ordered``). Entries are
    indices into ``ordered`` or (prefixes of) GPU UUIDs; as CUDA does, the list ends at the first entry that names
    no device (so "" or "-1" hides every GPU); here also at one that repeats a device."""
    if cuda_visible_devices is None:
        return list(ordered)
    out: list[Gpu] = []
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        if entry.startswith("MIG-"):
            raise GpuMappingError(f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}), which a CARLA server cannot "
                                  "render on: set env.graphics_adapters=[...] explicitly")
        if entry.isdigit() and int(entry) < len(ordered):
            found = [ordered[int(entry)]]
        elif entry.startswith("GPU-"):
            found = [gpu for gpu in ordered if gpu.uuid.startswith(entry)]
        else:
            found = []
        if len(found) != 1 or found[0] in out:
            break
        out.append(found[0])
    return out


def map_cuda_ids(cuda_ids: Sequence[int], gpus: Sequence[Gpu], cuda_visible_devices: str | None = None,
                 cuda_device_order: str | None = None) -> list[int]:
    """The graphics adapter of each CUDA device id in ``cuda_ids``, from nvidia-smi's ``gpus`` and the values of
    ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` (None: unset)."""
    visible = visible_devices(cuda_order(gpus, cuda_device_order), cuda_visible_devices)
    by_bus = sorted(gpus, key=lambda gpu: gpu.bus_id)
    adapters = []
    for cuda_id in cuda_ids:
        if not 0 <= cuda_id < len(visible):
            seen = f"CUDA devices 0-{len(visible) - 1}" if visible else "no CUDA device"
            where = "" if cuda_visible_devices is None else f" with CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}"
            raise GpuMappingError(f"env.gpus={list(cuda_ids)}: CUDA device {cuda_id} does not exist; this machine has "
                                  f"{seen}{where} (nvidia-smi lists {len(gpus)} GPUs)")
        adapters.append(by_bus.index(visible[cuda_id]))
    return adapters


def query_gpus(executable: str = NVIDIA_SMI, timeout_s: float = 30.0) -> list[Gpu]:
    """nvidia-smi's table of this machine's GPUs; GpuMappingError when nvidia-smi is missing or fails."""
    path = shutil.which(executable)
    if path is None:
        raise GpuMappingError(f"env.gpus names CUDA devices, but {executable} is not on PATH to map them to graphics "
                              "adapters: install the NVIDIA driver's tools, or set env.graphics_adapters=[...] "
                              "(the -graphicsadapter values) explicitly")
    try:
        done = subprocess.run([path, *QUERY], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GpuMappingError(f"{executable} failed ({error}); set env.graphics_adapters=[...] explicitly") from error
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[0]
        raise GpuMappingError(f"{executable} failed ({reason}); set env.graphics_adapters=[...] explicitly")
    return parse_gpu_table(done.stdout)


def graphics_adapters(cuda_ids: Sequence[int], override: Sequence[int] = (),
                      environ: Mapping[str, str] | None = None,
                      query: Callable[[], list[Gpu]] = query_gpus) -> list[int]:
    """The ``-graphicsadapter`` values of ``env.gpus``: ``override`` (``env.graphics_adapters``) when given, else
    the CUDA ids mapped through nvidia-smi's table (empty when no GPU is named)."""
    if override:
        return [int(adapter) for adapter in override]
    if not cuda_ids:
        return []
    environ = os.environ if environ is None else environ
    return map_cuda_ids(cuda_ids, query(), environ.get("CUDA_VISIBLE_DEVICES"), environ.get("CUDA_DEVICE_ORDER"))


__all__ = ["Gpu", "GpuMappingError", "cuda_order", "graphics_adapters", "map_cuda_ids", "parse_gpu_table",
           "query_gpus", "visible_devices"]
