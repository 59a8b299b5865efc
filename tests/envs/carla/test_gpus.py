"""CUDA device ids -> graphics adapters (envs/carla/gpus.py): the pure mapping on nvidia-smi tables, and the call
to nvidia-smi through a stand-in executable on PATH (a real process).

The tables are in the format ``nvidia-smi --query-gpu=index,pci.bus_id,uuid,name --format=csv,noheader`` prints
(one GPU a line: ``0, 00000000:18:00.0, GPU-<uuid>, NVIDIA H200``). They were written for these tests, not captured
from a machine: the machines this project is developed on have no NVIDIA GPU."""

import os
import stat
import sys

import pytest

from envs.carla.config import CarlaConfig
from envs.carla.gpus import Gpu, GpuMappingError, graphics_adapters, map_cuda_ids, parse_gpu_table, query_gpus

# Four GPUs of one model; nvidia-smi numbers them in PCI bus order.
FOUR_H200 = """\
0, 00000000:18:00.0, GPU-0a1b2c3d-0000-1111-2222-333344445555, NVIDIA H200
1, 00000000:2A:00.0, GPU-1b2c3d4e-0000-1111-2222-333344445555, NVIDIA H200
2, 00000000:3A:00.0, GPU-2c3d4e5f-0000-1111-2222-333344445555, NVIDIA H200
3, 00000000:5D:00.0, GPU-3d4e5f60-0000-1111-2222-333344445555, NVIDIA H200
"""

# Two models on one machine: CUDA's default order ranks the faster one first, which nvidia-smi cannot tell.
MIXED = """\
0, 00000000:01:00.0, GPU-aaaa0000-0000-1111-2222-333344445555, NVIDIA GeForce RTX 3090
1, 00000000:21:00.0, GPU-bbbb0000-0000-1111-2222-333344445555, NVIDIA RTX A6000
"""


def test_the_table_is_read_with_bus_ids_normalised():
    gpus = parse_gpu_table(FOUR_H200.replace("2A:00.0", "2a:00.0") + "\n")
    assert [g.index for g in gpus] == [0, 1, 2, 3] and gpus[1].bus_id == "00000000:2A:00.0"
    assert gpus[0] == Gpu(0, "00000000:18:00.0", "GPU-0a1b2c3d-0000-1111-2222-333344445555", "NVIDIA H200")
    with pytest.raises(GpuMappingError, match="cannot read nvidia-smi's line"):
        parse_gpu_table("No devices were found")


@pytest.mark.parametrize("cuda_ids,visible,order,adapters", [
    ([0, 1, 2, 3], None, None, [0, 1, 2, 3]),  # one model: CUDA's order is PCI bus order
    ([1, 0], None, "PCI_BUS_ID", [1, 0]),  # a server per id, in the order the user listed them
    ([0, 1], "2,3", None, [2, 3]),  # CUDA_VISIBLE_DEVICES renumbers: cuda:0 is the third GPU
    ([0, 1], "3,1", None, [3, 1]),  # ...and reorders
    ([0], "GPU-2c3d4e5f", None, [2]),  # a (prefix of a) UUID names a GPU too
    ([0], "1,7,2", None, [1]),  # as CUDA does, the list ends at the first entry that names no GPU
])
def test_cuda_ids_map_to_the_pci_bus_order_of_their_gpus(cuda_ids, visible, order, adapters):
    assert map_cuda_ids(cuda_ids, parse_gpu_table(FOUR_H200), visible, order) == adapters


def test_the_mapping_follows_bus_ids_not_the_order_of_the_lines():
    lines = FOUR_H200.splitlines()
    shuffled = parse_gpu_table("\n".join([lines[2], lines[0], lines[3], lines[1]]))
    assert map_cuda_ids([0, 1, 2, 3], shuffled) == [0, 1, 2, 3]
    assert map_cuda_ids([0], shuffled, "2") == [2]


def test_mixed_models_need_pci_bus_order_or_explicit_adapters():
    gpus = parse_gpu_table(MIXED)
    with pytest.raises(GpuMappingError, match="CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        map_cuda_ids([0], gpus)
    assert map_cuda_ids([1, 0], gpus, None, "PCI_BUS_ID") == [1, 0]


@pytest.mark.parametrize("cuda_ids,visible,message", [
    ([4], None, r"CUDA device 4 does not exist; this machine has CUDA devices 0-3 \(nvidia-smi lists 4 GPUs\)"),
    ([0, 2], "3,1", r"CUDA device 2 does not exist; this machine has CUDA devices 0-1 with CUDA_VISIBLE_DEVICES='3,1'"),
    ([0], "", "no CUDA device"),
    ([0], "-1", "no CUDA device"),
])
def test_a_cuda_id_that_does_not_exist_is_one_clear_line(cuda_ids, visible, message):
    with pytest.raises(GpuMappingError, match=message) as error:
        map_cuda_ids(cuda_ids, parse_gpu_table(FOUR_H200), visible)
    assert "\n" not in str(error.value)


def test_a_mig_instance_cannot_host_a_server():
    with pytest.raises(GpuMappingError, match="MIG instance"):
        map_cuda_ids([0], parse_gpu_table(FOUR_H200), "MIG-0a1b2c3d-0000-1111-2222-333344445555")


def test_explicit_adapters_are_used_as_given_and_nothing_is_asked():
    def no_query():
        raise AssertionError("nvidia-smi must not be asked")

    assert graphics_adapters([0, 1], [1, 0], environ={}, query=no_query) == [1, 0]
    assert graphics_adapters([], [], environ={}, query=no_query) == []
    assert graphics_adapters([0, 1], [], environ={"CUDA_VISIBLE_DEVICES": "3,2"},
                             query=lambda: parse_gpu_table(FOUR_H200)) == [3, 2]


def test_the_config_checks_gpus_and_adapters():
    with pytest.raises(ValueError, match="CUDA device ids >= 0"):
        CarlaConfig(gpus=[-1])
    with pytest.raises(ValueError, match="one adapter per entry of env.gpus"):
        CarlaConfig(gpus=[0, 1], graphics_adapters=[0])
    assert CarlaConfig(graphics_adapters=[2, 3]).graphics_adapters == [2, 3]


# --- nvidia-smi itself: a stand-in executable on PATH ----------------------------------------------------------------

def fake_nvidia_smi(folder, table: str, exit_code: int = 0, stderr: str = "") -> None:
    """An ``nvidia-smi`` in ``folder`` that records its arguments and prints ``table`` (or fails): a Python script,
    so it runs whatever PATH holds."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"open({str(folder / 'args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                      f"sys.stdout.write({table!r})\nsys.stderr.write({stderr!r})\nsys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """A folder that is the whole PATH (so a real nvidia-smi on this machine is never found)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_nvidia_smi_is_asked_for_the_table(on_path, monkeypatch):
    fake_nvidia_smi(on_path, FOUR_H200)
    gpus = query_gpus()
    assert len(gpus) == 4 and gpus[3].bus_id == "00000000:5D:00.0"
    assert (on_path / "args").read_text().split() == ["--query-gpu=index,pci.bus_id,uuid,name", "--format=csv,noheader"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert graphics_adapters([1, 0]) == [3, 2]


def test_without_nvidia_smi_the_error_says_to_give_the_adapters(on_path):
    missing = r"nvidia-smi is not on PATH .* env.graphics_adapters=\[\.\.\.\]"
    with pytest.raises(GpuMappingError, match=missing) as error:
        graphics_adapters([0])
    assert "\n" not in str(error.value)
    assert graphics_adapters([0], [1]) == [1]  # the override needs no nvidia-smi


def test_a_failing_nvidia_smi_is_named(on_path):
    fake_nvidia_smi(on_path, "", exit_code=9,
                    stderr="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    with pytest.raises(GpuMappingError, match="nvidia-smi failed \\(NVIDIA-SMI has failed because"):
        query_gpus()


def test_launched_servers_get_the_adapters_of_their_cuda_ids(on_path, monkeypatch, stand_in_root):
    # The manager a service builds maps env.gpus as it starts; with the adapters given, it asks nothing.
    from envs.carla.server import ServerManager

    fake_nvidia_smi(on_path, FOUR_H200)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3")
    manager = ServerManager.from_config(CarlaConfig(carla_root=str(stand_in_root), gpus=[2, 0]), 3)
    assert manager.adapters == (3, 1)
    os.remove(on_path / "nvidia-smi")
    explicit = ServerManager.from_config(CarlaConfig(carla_root=str(stand_in_root), gpus=[2, 0],
                                                     graphics_adapters=[0, 1]), 3)
    assert explicit.adapters == (0, 1)
    hosts = ServerManager.from_config(CarlaConfig(hosts=["a:2000"], gpus=[7]), 1)  # running servers: nothing to map
    assert hosts.adapters == ()
