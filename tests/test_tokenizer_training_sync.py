"""The tokenizer training loop without per-step host synchronisation, and `run.compile`."""

import json
import traceback
from pathlib import Path

import torch
from helpers import on_tensor_readback

import vfmvae
from vfmvae.config import load_config
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.trainer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = str(Path(vfmvae.__file__).resolve().parent)
# the step's code; the draws (equivariance, DiffAugment, crop: draws.py, equivariance.py) read a host generator (no
# device sync), data loading reads host tensors
TRAINING_CODE = (
    "tokenizer_training/trainer.py",
    "tokenizer_training/objective.py",
    "tokenizer_training/discriminators.py",
    "tokenizer_training/spectral_norm.py",
    "training/run.py",
    "training/state.py",
    "tokenizer_training/losses.py",
    "training/step.py",
    "training/ema.py",
    "tokenizer/model.py",
    "tokenizer/layers.py",
    "vfm/encoder.py",
)


def _cfg(run_dir, data, *overrides):
    return load_config(
        TokenizerTrainConfig,
        ROOT / "configs" / "tokenizer" / "tiny.yaml",
        [
            f"run.dir={run_dir}",
            f"data.source={data}",
            "data.num_workers=0",
            "run.batch_size=4",
            "run.grid_every_images=4000",
            *overrides,
        ],
    )


def test_training_loop_reads_nothing_back_between_logging_points(tmp_path, synthetic_dir):
    """As in diffusion training: the skip flags, the skip counters and the global image count stay on the device
    until a sync point (logging, checkpoints, the end), so the number of read-backs of device tensors made by the
    training code does not grow with the number of steps between sync points."""

    def run(steps: int) -> list[str]:
        seen = []

        def record(method: str) -> None:
            frame = next((f for f in reversed(traceback.extract_stack()) if f.filename.startswith(PACKAGE)), None)
            if frame is not None and frame.filename.replace("\\", "/").endswith(TRAINING_CODE):
                seen.append(f"{method} {Path(frame.filename).name}:{frame.lineno}")

        cfg = _cfg(
            tmp_path / f"run{steps}",
            synthetic_dir / "images",
            f"run.total_images={4 * steps}",
            f"run.log_every_images={4 * steps}",
            f"run.checkpoint_every_images={4 * steps}",
        )
        with on_tensor_readback(record):
            train_tokenizer(cfg, resume="none", progress=False)
        return seen

    short, long = run(1), run(3)
    assert sorted(short) == sorted(long), (short, long)  # none per step: the same reads for 1 step as for 3


def test_compile_is_off_by_default_and_compiles_the_repeated_blocks(tmp_path, synthetic_dir, monkeypatch):
    """`run.compile` compiles the repeated blocks in place (training/compile.py: regional, state-dict keys
    unchanged, so checkpoints and exports are the same files): the VFM layers' parts, the decoder's ConvNeXt layers
    and attention blocks, the encoder's projection blocks, the DINO discriminator's blocks; the spectral-norm heads
    stay eager. torch.compile is replaced by a recorder here; tests/test_compile.py compiles for real."""
    assert _cfg(tmp_path / "x", synthetic_dir).run.compile is False
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__))
    summary = train_tokenizer(
        _cfg(tmp_path / "run", synthetic_dir / "images", "run.total_images=4", "run.compile=true"),
        resume="none",
        progress=False,
    )
    assert summary["steps"] == 1
    assert {"ModulatedConvNeXtLayer", "_AttnProjectionBlock", "Block"} <= set(compiled), compiled  # Block: DINO's
    assert "SelfAttentionBlock" in compiled or "_SelfAttention" in compiled, compiled
    assert "_DiscHead" not in compiled and "_Synthesis" not in compiled, compiled  # eager: heads, the wrappers
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["images"] == 4
