"""The MFU numerator: benchmarks/flops.py counts a diffusion training step from the architecture; torch's
FlopCounterMode (benchmarks/common.count_flops, attention included) must give the same number."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize("arch", ["lightningdit-tiny", "sit-tiny", "reg-sit-tiny"])
def test_architecture_count_equals_torchs_count(arch):
    from flops import counted_training_flops, dit_training_flops

    from vfmvae.diffusion import diffusion_config

    config = diffusion_config(arch)
    counted = dit_training_flops(config)
    assert counted.blocks_attention > 0
    assert counted.training == counted_training_flops(config)


def test_xl1_training_costs_0_71_tflop_per_latent():
    """0.69 TFLOP was torch's count on CPU without attention (its CPU flash kernel is not counted)."""
    from flops import dit_training_flops

    from vfmvae.diffusion import diffusion_config

    lightningdit = dit_training_flops(diffusion_config("lightningdit-xl/1"))
    assert lightningdit.training / 1e12 == pytest.approx(0.7117, abs=1e-4)
    assert 3 * lightningdit.blocks_attention / 1e12 == pytest.approx(0.0254, abs=1e-4)
