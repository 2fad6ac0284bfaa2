"""configs/pipeline/released-weights.yaml end to end on tiny official-format files: the converted tokenizer
(tests/data/official_tokenizer_tiny), a tiny REG checkpoint as the official training script saves it, an official
latents_stats.pt, an ADM-layout reference batch; the result table puts each figure beside the paper's."""

import json
from pathlib import Path

import numpy as np
import torch
from helpers import TINY_TOKENIZER
from PIL import Image

from vfmvae.pipeline import load_pipeline
from vfmvae.pipeline.runner import run_pipeline
from vfmvae.pipeline.table import result_rows, results_text

ROOT = Path(__file__).resolve().parents[1]


def _official_reg_checkpoint(path: Path) -> Path:
    """A reg-sit-tiny on the tiny tokenizer's 8x4x4 latents, 4 classes, saved as REG's train.py saves checkpoints
    (`model`, `ema`, `opt`, `args`, `steps`; the sin-cos `pos_embed` is a saved parameter there)."""
    from vfmvae.diffusion import create_diffusion_model

    torch.manual_seed(0)
    model = create_diffusion_model("reg-sit-tiny", in_channels=8, input_size=4, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {**model.state_dict(), "pos_embed": model.pos_embed.clone()}
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 100}, path)
    return path


def test_released_weights_recipe_runs_on_official_format_files(tmp_path, synthetic_dir, monkeypatch, capsys):
    from vfmvae.demo import write_random_inception
    from vfmvae.evaluation import build_reference

    monkeypatch.chdir(ROOT)
    val = tmp_path / "val"
    # rIS takes 10 splits: at least 10 images
    for i, png in enumerate(sorted((synthetic_dir / "images").rglob("*.png"))[:12]):
        (val / png.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(png).save(val / png.parent.name / f"{i:03d}.png")
    inception = write_random_inception(tmp_path / "inception.safetensors")
    build_reference(val, tmp_path / "ref.npz", inception, max_images=8, progress=False)
    torch.save({"mean": torch.zeros(8), "std": torch.ones(8)}, tmp_path / "latents_stats.pt")
    overrides = [
        f"out={tmp_path / 'out'}",
        f"vars.tokenizer_config={TINY_TOKENIZER / 'config.yaml'}",
        f"vars.tokenizer_weights={TINY_TOKENIZER / 'official_G.safetensors'}",
        f"vars.vfm={TINY_TOKENIZER / 'siglip2-tiny-patch16'}",
        f"vars.diffusion_weights={_official_reg_checkpoint(tmp_path / 'reg.pt')}",
        "vars.diffusion_arch=reg-sit-tiny",
        f"vars.latent_stats={tmp_path / 'latents_stats.pt'}",
        f"vars.val_images={val}",
        f"vars.reference_batch={tmp_path / 'ref.npz'}",
        f"vars.inception={inception}",
        "vars.lpips=null",  # the VGG16 trunk (528 MB) cannot be downloaded here: LPIPS is reported as skipped
        "vars.num_samples=4",
        "vars.sample_batch=4",
        "vars.eval_batch=8",
    ]
    run_pipeline(load_pipeline(ROOT / "configs" / "pipeline" / "released-weights.yaml", overrides))
    out = tmp_path / "out"
    guided = json.loads((out / "sample-cfg" / "settings.json").read_text())
    plain = json.loads((out / "sample-nocfg" / "settings.json").read_text())
    assert guided["preset"] == plain["preset"] == "reg-sde"
    sampler = guided["sampler"]
    assert (sampler["sampler"], sampler["steps"], sampler["cfg_scale"]) == ("sde", 250, 4.0)
    assert plain["sampler"]["cfg_scale"] == 1.0 and np.load(out / "sample-cfg" / "samples.npz")["arr_0"].shape[0] == 4

    rows = {(r["label"], r["guidance"]): r for r in result_rows(out)}
    recon = rows[("released VFM-VAE tokenizer (ImageNet val)", None)]
    assert recon["paper"] == {"rfid": 0.52, "psnr": 22.99, "ssim": 0.593, "lpips": 0.221, "ris": 214.1}
    measured = recon["measured"]
    assert measured["psnr"] > 5 and measured["rfid"] is not None and measured["lpips"] is None
    with_cfg, without = rows[("released REG-SiT-XL/1", "CFG 4")], rows[("released REG-SiT-XL/1", "none")]
    assert with_cfg["paper"]["fid"] == 1.31 and without["paper"]["fid"] == 1.62  # the 640-epoch model's two rows
    assert with_cfg["measured"]["fid"] is not None and with_cfg["protocol"]["samples"] == 4
    assert (
        with_cfg["protocol"]["Inception"]
        == json.loads((out / "eval-gen-cfg" / "gen.json").read_text())["protocol"]["inception_sha256"][:12]
    )
    assert "seed (0, i)" in with_cfg["protocol"]["seeds"] and "reg-sde" in with_cfg["protocol"]["seeds"]
    text = results_text(out)
    assert "(1.31)" in text and "(22.99)" in text
    page = (out / "report" / "index.html").read_text()
    assert "<h2>Results</h2>" in page and "1.31" in page and "Time per step" in page
