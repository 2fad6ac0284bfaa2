"""`run.precision: official` (tokenizer_training/precision.py): float32 training with the official float16
synthesis blocks (num_fp16_res 3), refused by diffusion recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vfmvae.config import ConfigError, load_config
from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer_training.precision import use_official_precision
from vfmvae.vfm import VFMSpec

ROOT = Path(__file__).resolve().parents[1]


def _tiny_tokenizer() -> VFMVAE:
    vit = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=128
    )
    cfg = VFMVAEConfig(
        vfm=VFMSpec(name="custom", family="siglip", arch=vit, layers=(0, -1), scale_factor=2.0),
        proj_dims=(8, 8),
        image_size=64,
        z_dim=8,
        w_dim=16,
        inject_dims=(8, 8, 8, 8),
        num_blocks=4,
        channel_base=2048,
        channel_max=8,
        attn_blocks=(0,),
        attn_depths=(1,),
        legacy_noise=False,
    )
    torch.manual_seed(0)
    return VFMVAE(cfg).eval()


def _reconstruct(model: VFMVAE, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.dtype]]:
    """The reconstruction, and the dtype of each synthesis block's main output (its last ConvNeXt layer's
    pointwise conv). Batch 1 and 8 channels: float16 convolutions on CPU take torch's slow reference path."""
    seen: list[torch.dtype] = []
    hooks = [
        block.layers[-1].pwconv2.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for block in model.synthesis.blocks
    ]
    try:
        with torch.no_grad():
            output = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return output, seen


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_official_precision_runs_the_last_three_synthesis_blocks_in_float16(restore_tf32):
    model = _tiny_tokenizer()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference, dtypes = _reconstruct(model, images)
    assert dtypes == [torch.float32] * 4
    torch.backends.cudnn.allow_tf32 = True
    use_official_precision(model)
    official, dtypes = _reconstruct(model, images)
    assert dtypes == [torch.float32] + [torch.float16] * 3
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32  # as the official loop
    assert official.dtype == torch.float32
    error = (official - reference).abs().max() / reference.abs().max()
    assert 0 < error < 1e-2, error  # float16 rounding, nothing else


def test_float16_blocks_leave_a_callers_bf16_autocast_on_in_the_other_blocks():
    model = _tiny_tokenizer()
    model.synthesis.fp16_blocks = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, dtypes = _reconstruct(model, torch.rand(1, 3, 64, 64))
    assert dtypes == [torch.bfloat16] * 3 + [torch.float16]


def test_official_precision_is_a_tokenizer_setting(tmp_path):
    from vfmvae.diffusion_training.config import DiffusionTrainConfig
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig

    tokenizer = ROOT / "configs" / "tokenizer" / "tiny.yaml"
    cfg = load_config(TokenizerTrainConfig, tokenizer, ["data.source=.", "run.precision=official"])
    assert cfg.run.precision == "official"
    with pytest.raises(ConfigError, match="run.precision.*fp8|fp8.*run.precision"):
        load_config(TokenizerTrainConfig, tokenizer, ["data.source=.", "run.precision=fp8"])
    with pytest.raises(ConfigError, match="official is the tokenizer's"):
        load_config(
            DiffusionTrainConfig,
            ROOT / "configs" / "diffusion" / "tiny.yaml",
            [f"data.cache={tmp_path}", "run.precision=official"],
        )
