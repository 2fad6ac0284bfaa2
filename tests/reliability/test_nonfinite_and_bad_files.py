"""Non-finite losses and gradients in diffusion training; damaged, foreign and hostile files."""

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmvae.checkpoint.serialize import CheckpointFormatError
from vfmvae.config import ConfigError, load_config
from vfmvae.diffusion import DiffusionTransformer, create_diffusion_model
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "official_tokenizer_tiny"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, synthetic_dir):
    from vfmvae.latents import cache_latents
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    root = tmp_path_factory.mktemp("rel")
    convert_official_tokenizer(
        DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16", root / "tok"
    )
    cache_latents(root / "tok", synthetic_dir / "images", root / "cache", num_workers=0, device="cpu", progress=False)
    return root / "cache"


def _cfg(cache, run_dir, *overrides):
    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs/diffusion/tiny.yaml",
        [
            f"data.cache={cache}",
            f"run.dir={run_dir}",
            "run.grid_every_images=0",
            "run.batch_size=8",
            "run.log_every_images=8",  # every step
            "model.overrides.align_dims=[]",
            "transport.align_weight=0",
            "data.flip=false",
            *overrides,
        ],
    )


def _poison(monkeypatch, bad_calls, where="loss"):
    """Make the loss (or, through a hook, the gradient) non-finite on the given loss calls (0-based)."""
    import vfmvae.diffusion_training.objective as objective

    real = objective.training_loss
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        terms = real(model, *args, **kwargs)
        n = calls["n"]
        calls["n"] += 1
        if n in bad_calls:
            if where == "loss":
                terms.loss = terms.loss * float("nan")
            else:
                terms.loss.register_hook(lambda g: g * float("inf"))
        return terms

    monkeypatch.setattr(objective, "training_loss", poisoned)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_steps_are_skipped_and_counted(cache, tmp_path, monkeypatch, where):
    _poison(monkeypatch, {2, 5}, where)
    summary = train_diffusion(
        _cfg(cache, tmp_path / "run", "run.total_images=64", "run.checkpoint_every_images=800"), progress=False
    )
    assert summary["steps"] == 8 and summary["skipped_steps"] == 2
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert math.isnan(records[2]["grad_norm"]) and math.isfinite(records[3]["grad_norm"])
    weights = load_file(tmp_path / "run" / "export" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_consecutive_non_finite_steps_stop_the_run_with_its_checkpoint_intact(cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run, "run.total_images=32", "run.checkpoint_every_images=16"), progress=False)
    good = load_file(run / "checkpoints" / "step-00000004" / "model.safetensors")
    _poison(monkeypatch, set(range(100)))  # every step of the continued run
    with pytest.raises(RuntimeError, match=r"3 consecutive non-finite steps by step 7.*step-00000006"):
        train_diffusion(
            _cfg(
                cache, run, "run.total_images=160", "run.checkpoint_every_images=16", "run.max_consecutive_nonfinite=3"
            ),
            progress=False,
        )
    from vfmvae.checkpoint import CheckpointManager

    latest = CheckpointManager(run).latest()
    assert latest.name == "step-00000006"  # the skipped steps changed nothing; that checkpoint holds the good weights
    again = load_file(latest / "model.safetensors")
    assert all(torch.equal(good[k], again[k]) for k in good)


def _tiny_export(tmp_path):
    model = create_diffusion_model("sit-tiny")
    model.save_pretrained(tmp_path / "m")
    return model


def test_damaged_and_foreign_model_files_give_clear_errors(tmp_path):
    _tiny_export(tmp_path)
    weights = tmp_path / "m" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(CheckpointFormatError, match="model.safetensors"):
        DiffusionTransformer.from_pretrained(tmp_path / "m")
    # weights of another size under the same config: every mismatch is listed
    other = create_diffusion_model("sit-tiny", hidden_size=128)
    from safetensors.torch import save_file

    save_file(other.state_dict(), str(weights))
    with pytest.raises(CheckpointFormatError, match="shape mismatches: blocks.0"):
        DiffusionTransformer.from_pretrained(tmp_path / "m")
    # a folder of another architecture
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    convert_official_tokenizer(
        DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16", tmp_path / "tok"
    )
    with pytest.raises(CheckpointFormatError, match="is a 'VFMVAE' checkpoint, not 'DiffusionTransformer'"):
        DiffusionTransformer.from_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(DiffusionTrainConfig, None, [f"data.cache={tmp_path}", "run.totl_steps=3"])


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hostile_official_checkpoint_is_refused_and_nothing_is_overwritten(tmp_path):
    from vfmvae.diffusion.convert import convert_official_diffusion

    good = _tiny_export(tmp_path)
    torch.save({"ema": good.state_dict()}, tmp_path / "ok.pt")
    convert_official_diffusion(tmp_path / "ok.pt", "reg", "sit-tiny", tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    target = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"ema": {"x_embedder.proj.weight": _Exploit(str(target))}}, f)
    with pytest.raises(CheckpointFormatError, match="refused, not a plain tensor file"):
        convert_official_diffusion(tmp_path / "evil.pt", "reg", "sit-tiny", tmp_path / "out")
    assert not target.exists()
    with pytest.raises(CheckpointFormatError):  # a checkpoint of another architecture: refused, output untouched
        convert_official_diffusion(tmp_path / "ok.pt", "reg", "sit-tiny", tmp_path / "out", depth=3)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
