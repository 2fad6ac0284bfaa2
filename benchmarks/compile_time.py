"""Compile time of each full-size training step with `run.compile: true` (regional torch.compile, inductor).

    python compile_time.py                                   # every step below, batch 1, on the default device
    python compile_time.py --only lightningdit-xl/1 --batch 2 --json compile.jsonl

Diffusion (`lightningdit-xl/1`, `reg-sit-xl/1`): the trainer's step (training_loss through optimizer_step, fused
AdamW, clipping) on random latents, its blocks compiled with `compile_diffusion` as `vfmvae train diffusion` does.
Tokenizer (`tokenizer-stage0` .. `tokenizer-stage3`): `train_tokenizer` itself on each stage recipe at full size
(random SigLIP2-L, f16d32 decoder, random DINO discriminator, LPIPS with a random VGG16 trunk, `init: null`), one
D step and one G step per optimizer step. The stages run in one process, one after the other, as listed: a later
stage reuses the graphs of the shapes an earlier one compiled (stage 1 has stage 0's objective and compiles almost
nothing); a run of a stage on its own pays about what stage 0 pays.

Per step: `compile_s` (the seconds dynamo's compile callbacks measured, training/compile.py `CompileWatch`: forward
graphs, and backward graphs compiled at the first backward), `graphs`, `first_step_s` (compilation + one step) and
`step_s` (a later step). The equivariance draws of the tokenizer's later steps may compile more shapes (bounded:
see training/compile.py); those are counted in `later_compile_s`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import emit

from vfmvae.training.compile import CompileSettings, compile_watch

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION = ["lightningdit-xl/1", "reg-sit-xl/1"]
TOKENIZER = ["tokenizer-stage0", "tokenizer-stage1", "tokenizer-stage2", "tokenizer-stage3"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diffusion_compile_time(arch: str, batch: int, device: torch.device, settings: CompileSettings) -> dict:
    from vfmvae.diffusion import TransportConfig, create_diffusion_model, training_loss
    from vfmvae.diffusion.transport import sample_time
    from vfmvae.training import fused_optimizer_supported, optimizer_step
    from vfmvae.training.compile import compile_diffusion

    torch.manual_seed(0)
    model = create_diffusion_model(arch).to(device).train()
    c = model.config
    transport = TransportConfig(
        cosine_weight=0.0 if c.align_dims else 1.0,
        align_weight=0.5 if c.align_dims else 0.0,
        cls_weight=0.03 if c.class_token_dim else 0.0,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), fused=fused_optimizer_supported(device))
    compile_diffusion(model, settings)
    generator = torch.Generator(device=device).manual_seed(0)
    tokens = model.num_tokens + (1 if c.class_token_dim else 0)
    batch_data = {
        "x": torch.randn(batch, c.in_channels, c.input_size, c.input_size, device=device),
        "y": torch.randint(0, c.num_classes, (batch,), device=device),
        "targets": [torch.randn(batch, tokens, d, device=device) for d in c.align_dims] or None,
        "cls": torch.randn(batch, c.class_token_dim, device=device) if c.class_token_dim else None,
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_fn(module, data):
        with autocast:
            return training_loss(
                module,
                data["x"],
                data["y"],
                transport,
                t=sample_time(batch, transport, generator, device=device),
                noise=torch.randn(data["x"].shape, generator=generator, device=device),
                cls_noise=torch.randn(batch, c.class_token_dim, generator=generator, device=device)
                if c.class_token_dim
                else None,
                drop_labels=torch.rand(batch, generator=generator, device=device) < 0.1,
                align_targets=data["targets"],
                cls_target=data["cls"],
            ).loss.mean()

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        optimizer_step(model, opt, [batch_data], loss_fn, batch_size_of=lambda d: len(d["y"]), grad_clip=1.0)
        _sync(device)
        return time.perf_counter() - start

    watch = compile_watch()
    graphs, seconds = watch.graphs, watch.seconds
    first = step()
    compiled_graphs, compile_s = watch.graphs - graphs, watch.seconds - seconds
    later = step()
    return {
        "step": arch,
        "batch": batch,
        "compile_s": round(compile_s, 1),
        "graphs": compiled_graphs,
        "first_step_s": round(first, 1),
        "step_s": round(later, 2),
        "later_compile_s": round(watch.seconds - seconds - compile_s, 1),
    }


def tokenizer_compile_time(stage: str, batch: int, steps: int, work: Path, settings: CompileSettings) -> dict:
    """`train_tokenizer` on a stage recipe with run.compile true; compile seconds from the process's CompileWatch."""
    from vfmvae.config import load_config
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    if settings.backend != "inductor" or settings.mode is not None:
        raise SystemExit("the tokenizer rows run the trainer, which compiles with inductor's default mode")
    recipe = ROOT / "configs" / "tokenizer" / f"{stage.removeprefix('tokenizer-')}.yaml"
    run_dir = work / stage
    overrides = [
        f"data.source={work / 'data' / 'images'}",
        "data.num_workers=0",
        "init=null",
        "model.vfm.random_init=true",
        f"loss.lpips_weights={work / 'vgg16-random.safetensors'}",
        "disc.weights=null",
        f"run.dir={run_dir}",
        f"run.batch_size={batch}",
        f"run.total_images={batch * steps}",
        "run.precision=" + ("bf16" if torch.cuda.is_available() else "fp32"),
        "run.compile=true",
        f"run.log_every_images={batch}",  # every step
        "run.grid_every_images=0",
        f"run.checkpoint_every_images={batch * 100_000}",
    ]
    cfg = load_config(TokenizerTrainConfig, recipe, overrides)
    watch = compile_watch()
    graphs, seconds = watch.graphs, watch.seconds
    first_compile: list[float] = []

    # the compile seconds of step 1 alone: the watch's total when step 1's record is written
    undo = _records_file_writer(run_dir, lambda: first_compile.append(watch.seconds - seconds))
    try:
        train_tokenizer(cfg, resume="none", progress=False)
    finally:
        undo()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    total = watch.seconds - seconds
    step1 = records[0]["sec_per_step"]
    later = (records[-1]["sec_per_step"] * records[-1]["step"] - step1) / max(1, records[-1]["step"] - 1)
    compile_s = first_compile[0] if first_compile else total
    return {
        "step": stage + " (D step + G step)",
        "batch": batch,
        "compile_s": round(compile_s, 1),
        "graphs": watch.graphs - graphs,
        "first_step_s": round(step1, 1),
        "step_s": round(later, 2),
        "later_compile_s": round(total - compile_s, 1),
    }


def _records_file_writer(run_dir: Path, on_first_record) -> Callable[[], None]:
    """Calls `on_first_record` when the run writes its first metrics record (step 1 finished, a record every step);
    returns the undo. Without TrainingRun.write_record (a renamed API) nothing is patched and the caller reports
    the compile seconds of all steps."""
    from vfmvae.training.run import TrainingRun

    writer = getattr(TrainingRun, "write_record", None)
    if writer is None:
        return lambda: None
    seen: list[bool] = []

    def write_record(self, record, *args, **kwargs):
        if not seen:
            seen.append(True)
            on_first_record()
        return writer(self, record, *args, **kwargs)

    TrainingRun.write_record = write_record
    return lambda: setattr(TrainingRun, "write_record", writer)


def _tokenizer_inputs(work: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    write_synthetic_dataset(SyntheticConfig(out=work / "data", num=8, size=256), progress=False)
    vgg = {f"features.{k}": v for k, v in torchvision.models.vgg16().features.state_dict().items()}
    save_file(vgg, work / "vgg16-random.safetensors")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=DIFFUSION + TOKENIZER, choices=DIFFUSION + TOKENIZER)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokenizer-steps", type=int, default=2, help="optimizer steps per tokenizer stage (>= 2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", default=None, help="inductor mode for the diffusion steps (default: inductor's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.tokenizer_steps < 2:
        p.error("--tokenizer-steps must be at least 2 (step 1 compiles, later steps time the compiled step)")
    settings = CompileSettings(mode=args.mode)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if any(name in TOKENIZER for name in args.only):
            _tokenizer_inputs(work)
        for name in args.only:
            start = time.perf_counter()
            if name in DIFFUSION:
                result = diffusion_compile_time(name, args.batch, device, settings)
            else:
                result = tokenizer_compile_time(name, args.batch, args.tokenizer_steps, work, settings)
            result.update(benchmark="compile_time", device=str(device), wall_s=round(time.perf_counter() - start, 1))
            emit(result, None)
            if args.json:  # one line per step, appended as each finishes
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
