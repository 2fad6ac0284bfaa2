"""Collectives on the run's device (NCCL has no host path), and a process group under torchrun for one process.

The 2-process runs below go through tests/dist/device_discipline.py, which makes every collective reject a
tensor made on the host: on a CPU run such a tensor works under gloo, but the same line fails at the first
step under NCCL. (Measured before the fix: the tokenizer trainer's image count, `torch.tensor([n])`, failed
here with "torch.distributed.all_reduce got a host tensor".)
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_argv

from vfmvae import distributed as dist_utils

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from device_discipline import checked_collectives  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "tests" / "dist" / "device_discipline.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment torchrun gives its only process; the group is torn down afterwards."""
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(key, value)
    yield
    dist_utils.destroy_distributed()


def test_torchrun_with_one_process_creates_the_process_group(one_process_group):
    device = dist_utils.init_distributed(device="cpu")
    assert dist_utils.is_distributed() and dist_utils.world_size() == 1 and device == torch.device("cpu")
    assert dist_utils.collective_device() == torch.device("cpu")  # gloo serves the host
    assert dist_utils.init_distributed(device="cpu") == device  # a second call joins nothing new


def test_without_torchrun_there_is_no_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    dist_utils.init_distributed(device="cpu")
    assert not dist_utils.is_distributed()


def test_the_check_rejects_host_tensors_and_accepts_device_tensors(one_process_group):
    """The check itself can fail: a tensor made without a device, or computed only from such tensors, is refused;
    one made on the run's device, moved there, or computed from a device tensor passes."""
    device = dist_utils.init_distributed(device="cpu")
    weight = torch.nn.Linear(2, 1).to(device).weight
    with checked_collectives():
        for host in (torch.tensor([3.0]), torch.zeros(2) + 1, torch.ones(()).cpu()):
            with pytest.raises(RuntimeError, match="device discipline: torch.distributed.all_reduce got a host tensor"):
                dist_utils.all_reduce_sum(host)
        for on_device in (
            torch.tensor([3.0], device=device),
            torch.zeros(2).to(device),
            weight.detach() * 2,
            torch.full((), 4, dtype=torch.int64, device=device),
        ):
            assert torch.equal(dist_utils.all_reduce_sum(on_device.clone()), on_device)  # one process: unchanged
    dist_utils.all_reduce_sum(torch.tensor([3.0]))  # outside the check, gloo takes it (which NCCL would not)


def _torchrun(nproc: int, *args: str, timeout: int = 600) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(LAUNCHER),
        "-m",
        "vfmvae",
        *args,
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_training_keeps_every_collective_on_the_device(tmp_path, synthetic_dir):
    """Tokenizer training (D and G steps, gradient sync, skip flags, image count), latent caching and diffusion
    training (DDP, skip flags), each as 2 CPU processes with the device check on every collective."""
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    data = synthetic_dir / "images"
    _torchrun(
        2,
        *train_argv(
            "tokenizer",
            ROOT / "configs" / "tokenizer" / "tiny.yaml",
            f"run.dir={tmp_path / 'tok'}",
            f"data.source={data}",
            "data.num_workers=0",
            "run.batch_size=4",
            "run.total_images=8",
            "run.log_every_images=4",
            "run.checkpoint_every_images=4",
        ),
    )
    assert (tmp_path / "tok" / "export" / "model.safetensors").is_file()
    official = ROOT / "tests" / "data" / "official_tokenizer_tiny"
    convert_official_tokenizer(
        official / "config.yaml",
        official / "official_G.safetensors",
        official / "siglip2-tiny-patch16",
        tmp_path / "converted",
    )
    _torchrun(
        2,
        "cache-latents",
        "--tokenizer",
        str(tmp_path / "converted"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "cache"),
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--flip",
        "--vfm-features",
        "dinov2-test",
    )
    _torchrun(
        2,
        *train_argv(
            "diffusion",
            ROOT / "configs" / "diffusion" / "tiny.yaml",
            f"data.cache={tmp_path / 'cache'}",
            f"run.dir={tmp_path / 'dit'}",
            "run.grid_every_images=0",
            "run.total_images=64",
            "run.log_every_images=32",  # every step of the recipe's batch 32
            "run.checkpoint_every_images=32",
            "data.num_workers=0",
        ),
    )
    assert (tmp_path / "dit" / "export").is_dir()
