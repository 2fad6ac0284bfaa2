"""The README's "Use with diffusers" code runs as written (on tiny models laid out like `make demo`'s output)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed (pip install "vfmvae[diffusers]")')

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "official_tokenizer_tiny"


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"expected one python block in README section {title!r}"
    return blocks[0]


@pytest.mark.slow
def test_use_with_diffusers_section_runs_as_written(tmp_path, monkeypatch):
    from vfmvae.checkpoint.serialize import load_tensors
    from vfmvae.cli import main
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    monkeypatch.chdir(tmp_path)
    demo = Path("runs/demo")
    convert_official_tokenizer(
        DATA / "config.yaml",
        DATA / "official_G.safetensors",
        DATA / "siglip2-tiny-patch16",
        demo / "tokenizer" / "export",
    )
    torch.manual_seed(0)
    create_diffusion_model("reg-sit-tiny", in_channels=8, input_size=4, num_classes=4).save_pretrained(
        demo / "diffusion" / "export"
    )
    tokenizer = str((demo / "tokenizer" / "export").resolve())  # absolute, as `train diffusion` writes it
    (demo / "diffusion" / "export" / "latent_stats.json").write_text(
        json.dumps({"mean": [0.1] * 8, "std": [1.5] * 8, "tokenizer": tokenizer})
    )

    namespace: dict = {}
    exec(compile(_readme_block("Use with diffusers"), "README.md: Use with diffusers", "exec"), namespace)

    assert namespace["reconstruction"].shape == (1, 3, 64, 64)
    for ours in ("tokenizer", "diffusion"):
        before = load_tensors(demo / ours / "export" / "model.safetensors")
        after = load_tensors(demo / f"{ours}-from-diffusers" / "model.safetensors")
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the README's claim: seed 0 gives `vfmvae sample --seed 0`'s image (same steps, guidance, labels)
    assert (
        main(
            [
                "sample",
                "--diffusion",
                str(demo / "diffusion" / "export"),
                "--num-samples",
                "2",
                "--classes",
                "0,1",
                "--steps",
                "10",
                "--cfg",
                "2",
                "--seed",
                "0",
                "--batch-size",
                "2",
                "--out",
                "s",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    from PIL import Image

    with Image.open(demo / "diffusers-sample.png") as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.load("s/samples.npz")["arr_0"][0])
