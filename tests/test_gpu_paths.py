"""CUDA-only checks (marked `cuda`: skipped without a GPU; `make gpu-check` runs them): NCCL collectives on the
device, a training step that never waits for the GPU, bf16 tokenizer and diffusion forwards."""

import socket

import pytest
import torch

from vfmvae import distributed as dist_utils

pytestmark = pytest.mark.cuda


@pytest.fixture
def nccl_group(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(key, value)
    device = dist_utils.init_distributed()
    yield device
    dist_utils.destroy_distributed()


def test_nccl_group_for_one_process_reduces_device_tensors_and_names_host_ones(nccl_group):
    assert nccl_group.type == "cuda" and dist_utils.is_distributed()
    assert dist_utils.collective_device().type == "cuda"
    count = torch.full((), 3, dtype=torch.int64, device=nccl_group)
    assert int(dist_utils.all_reduce_sum(count)) == 3
    with pytest.raises(RuntimeError, match="serves cuda"):
        dist_utils.all_reduce_sum(torch.tensor([3.0]))
    dist_utils.barrier()


def test_fused_training_step_never_synchronises():
    """The fused AdamW step (loss, finiteness flag, clipping, device-side skip, EMA) queues without a host sync."""
    from helpers import TinyNet, TinyNetConfig, classification_loss

    from vfmvae.training import EMA, optimizer_step

    device = torch.device("cuda")
    model = TinyNet(TinyNetConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ema = EMA(model, halflife_images=8)
    batch = {
        "image": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, device=device),
        "label": torch.randint(0, 4, (4,), device=device),
    }
    optimizer_step(model, opt, [batch], classification_loss, batch_size_of=lambda b: 4, grad_clip=1.0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = optimizer_step(model, opt, [batch], classification_loss, batch_size_of=lambda b: 4, grad_clip=1.0)
        ema.update(model, 8, 4, applied=result.applied_t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not result.skipped and result.grad_norm > 0


def test_bf16_forwards_are_finite(device: str = "cuda"):
    from pathlib import Path

    from vfmvae.config import load_config
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import build_generator

    recipe = Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "tiny.yaml"
    cfg = load_config(TokenizerTrainConfig, recipe, [f"data.source={recipe.parent}"])  # any folder: no data is read
    tokenizer = build_generator(cfg).to(device).eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        recon = tokenizer(torch.rand(2, 3, 64, 64, device=device))
    assert recon.shape == (2, 3, 64, 64) and torch.isfinite(recon.float()).all()
    model = create_diffusion_model("lightningdit-xl/1").to(device).eval()
    c = model.config
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        out = model(
            torch.randn(2, c.in_channels, c.input_size, c.input_size, device=device),
            torch.rand(2, device=device),
            torch.zeros(2, dtype=torch.long, device=device),
        )
    assert torch.isfinite(out.sample.float()).all()
