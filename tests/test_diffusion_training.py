"""`vfmvae train diffusion` on a latent cache of the synthetic set: loss falls, resume is exact, errors are clear."""

import json
from pathlib import Path

import pytest
import torch
from helpers import on_tensor_readback, python_m_vfmvae, train_argv
from safetensors.torch import load_file

from vfmvae.config import ConfigError, load_config
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion

ROOT = Path(__file__).parent.parent


@pytest.fixture
def cache(tiny_latent_cache):
    return tiny_latent_cache


def _cfg(cache, run_dir, *overrides):
    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion" / "tiny.yaml",
        [f"data.cache={cache}", f"run.dir={run_dir}", "run.grid_every_images=0", *overrides],
    )


def _losses(run_dir):
    return [json.loads(line)["loss/mse"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_recipe_loss_falls_and_exports(cache, tmp_path):
    summary = train_diffusion(
        _cfg(
            cache, tmp_path / "run", "run.total_images=4800", "run.log_every_images=320", "run.grid_every_images=4800"
        ),
        progress=False,
    )
    mse = _losses(tmp_path / "run")
    first, last = sum(mse[:2]) / 2, sum(mse[-2:]) / 2
    print(f"tiny LightningDiT+REPA velocity MSE: {first:.3f} -> {last:.3f}")
    assert last < 0.75 * first, mse
    assert summary["skipped_steps"] == 0
    export = Path(summary["export"])
    from vfmvae.diffusion import DiffusionTransformer

    model = DiffusionTransformer.from_pretrained(export)
    assert (model.config.in_channels, model.config.input_size, model.config.num_classes) == (8, 4, 4)
    stats = json.loads((export / "latent_stats.json").read_text())
    assert len(stats["mean"]) == 8 and Path(stats["tokenizer"]).name == "tok"
    grid = tmp_path / "run" / "grids" / "step-00000150.png"
    assert grid.is_file() and grid.stat().st_size > 1000  # EMA samples decoded by the cache's tokenizer
    # `vfmvae report RUN` draws the loss curves and links the latest sample grid
    from vfmvae.cli import main

    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "diffusion run" in page and "plots/run-losses.png" in page and "step-00000150.png" in page
    assert (tmp_path / "run" / "report" / "plots" / "run-losses.png").stat().st_size > 5000


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cache, tmp_path):
    common = ("run.checkpoint_every_images=24", "run.batch_size=8", "run.log_every_images=8")  # 3 steps, 1 step
    train_diffusion(_cfg(cache, tmp_path / "full", "run.total_images=56", *common), progress=False)
    train_diffusion(_cfg(cache, tmp_path / "split", "run.total_images=24", *common), progress=False)  # "killed" at 3
    train_diffusion(_cfg(cache, tmp_path / "split", "run.total_images=56", *common), progress=False)  # resumed
    ckpts = lambda run: sorted((run / "checkpoints").glob("step-*"))  # noqa: E731
    a, b = ckpts(tmp_path / "full")[-1], ckpts(tmp_path / "split")[-1]
    assert a.name == b.name == "step-00000007"
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = load_file(a / name), load_file(b / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert _losses(tmp_path / "full")[3:] == _losses(tmp_path / "split")[3:]


def test_reg_recipe_with_class_token_runs(cache, tmp_path):
    cfg = _cfg(
        cache,
        tmp_path / "reg",
        "model.arch=reg-sit-tiny",
        "model.overrides={}",
        "transport.time_sampling=uniform",
        "transport.cosine_weight=0",
        "transport.cls_weight=0.03",
        "run.total_images=128",
        "run.log_every_images=32",
        "run.gradient_checkpointing=true",
    )
    summary = train_diffusion(cfg, progress=False)
    records = [json.loads(x) for x in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/mse", "loss/align", "loss/cls"} <= set(records[-1]) and summary["steps"] == 4


def test_configuration_errors_name_the_problem(cache, tmp_path, synthetic_dir):
    with pytest.raises(ConfigError, match="model.overrides.*depht"):
        train_diffusion(_cfg(cache, tmp_path / "a", "model.overrides={depht: 3}"), progress=False)
    with pytest.raises(ConfigError, match="has no projector"):
        train_diffusion(_cfg(cache, tmp_path / "b", "model.overrides={}"), progress=False)
    with pytest.raises(ConfigError, match="data.cache"):
        _cfg(tmp_path / "missing", tmp_path / "c")


def test_train_diffusion_command(cache, tmp_path, capsys):
    from vfmvae.cli import main

    args = train_argv(
        "diffusion",
        ROOT / "configs/diffusion/tiny.yaml",
        f"data.cache={cache}",
        f"run.dir={tmp_path / 'cli'}",
        "run.total_images=64",
        "run.grid_every_images=0",
    )
    assert main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["diffusion", "list"]) == 0
    assert "lightningdit-xl/1" in capsys.readouterr().out


def test_alignment_features_from_diffusion_blocks(cache, tmp_path, synthetic_dir):
    """`align extract/report` with diffusion:DIR@BLOCK sources (t = 0.5, null label, mean over image tokens)."""
    from safetensors.torch import load_file as load

    from vfmvae.alignment.extract import extract_features
    from vfmvae.alignment.report import AlignReportConfig, run_report
    from vfmvae.alignment.transforms import make_transformed_set

    summary = train_diffusion(_cfg(cache, tmp_path / "run", "run.total_images=640"), progress=False)
    export = summary["export"]
    make_transformed_set(synthetic_dir / "images", tmp_path / "t", size=64, progress=False)
    f1 = load(
        extract_features(f"diffusion:{export}@1", tmp_path / "t", tmp_path / "b1.safetensors", progress=False)["out"]
    )
    f1_again = load(
        extract_features(f"diffusion:{export}@1", tmp_path / "t", tmp_path / "b1b.safetensors", progress=False)["out"]
    )
    f0 = load(
        extract_features(f"diffusion:{export}@0", tmp_path / "t", tmp_path / "b0.safetensors", progress=False)["out"]
    )
    assert f1["features"].shape == (64, 64) and torch.equal(f1["features"], f1_again["features"])  # seeded noise
    assert not torch.allclose(f0["features"], f1["features"])
    with pytest.raises(ValueError, match="use 0 .embedding. .. 2, or proj"):
        extract_features(f"diffusion:{export}@9", tmp_path / "t", tmp_path / "x.safetensors", progress=False)
    report = run_report(
        AlignReportConfig(
            images=tmp_path / "t",
            out=tmp_path / "report",
            reference="vfm:dinov2-test",
            models=(f"diffusion:{export}@1", f"diffusion:{export}@proj"),
            transformations=("clean", "noise_0.100"),
        )
    )
    row = report["table"][f"diffusion:{export}@proj"]
    assert set(row) == {"clean", "noise_0.100"} and all(-1 <= v <= 1 for v in row.values())


@pytest.mark.parametrize(
    "recipe,arch,params",
    [
        ("lightningdit-xl1", "lightningdit-xl/1", 675.0),
        ("reg-sit-xl1", "reg-sit-xl/1", 684.8),
        ("tiny", "lightningdit-tiny", None),
    ],
)
def test_recipes_load_and_describe_the_paper_models(tmp_path, recipe, arch, params):
    from vfmvae.diffusion import DiffusionTransformer, diffusion_config

    cfg = load_config(
        DiffusionTrainConfig, ROOT / "configs" / "diffusion" / f"{recipe}.yaml", [f"data.cache={tmp_path}"]
    )
    assert cfg.model.arch == arch
    if params is not None:  # 16x16x32 latents, 1000 classes
        with torch.device("meta"):
            model = DiffusionTransformer(diffusion_config(arch))
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, abs=0.1)
        assert cfg.run.batch_size == 1024 and cfg.optim.lr == 2e-4 and cfg.run.ema_halflife_images == 7_097_472


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_and_accumulation_equal_one_process(cache, tmp_path):
    """Draws are made per global batch and sliced per sample, so 2 ranks x 4 = 1 process x 8 = 4 micro-batches of 2."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = (
        f"data.cache={cache}",
        "run.grid_every_images=0",
        "run.batch_size=8",
        "run.total_images=32",
        "run.checkpoint_every_images=800",
        "run.log_every_images=8",
    )
    runs = {}
    for name, micro, nproc in (("one", 8, 0), ("accum", 2, 0), ("two", 4, 2)):
        args = train_argv(
            "diffusion",
            ROOT / "configs/diffusion/tiny.yaml",
            *common,
            f"run.dir={tmp_path / name}",
            f"run.micro_batch={micro}",
        )
        proc = subprocess.run(
            python_m_vfmvae(args, processes=nproc), env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = load_file(tmp_path / name / "checkpoints" / "step-00000004" / "model.safetensors")
    init = train_diffusion(_cfg(cache, tmp_path / "init", "run.total_images=0"), progress=False)
    start = load_file(Path(init["export"]) / "model.safetensors")  # the EMA of a run without steps: the init
    for name in ("accum", "two"):
        for k in runs["one"]:
            torch.testing.assert_close(runs[name][k], runs["one"][k], rtol=0, atol=1e-5, msg=f"{name}: {k}")
    assert max(float((runs["one"][k] - start[k]).abs().max()) for k in start) > 1e-3  # the runs did train


def test_training_loop_reads_nothing_back_between_logging_points(cache, tmp_path):
    """On a GPU every read-back of a tensor (item, float, bool, tolist) stalls the CPU until the GPU catches up. The
    loop may read only at its sync points (logging, checkpoints, the end), so the number of read-backs made by the
    training code must not grow with the number of steps between them. (Data loading reads CPU tensors; that is
    not counted.)"""
    import traceback

    import vfmvae

    package = str(Path(vfmvae.__file__).resolve().parent)
    training_code = (
        "diffusion_training/trainer.py",
        "diffusion_training/objective.py",
        "diffusion_training/draws.py",
        "training/run.py",
        "training/state.py",
        "training/step.py",
        "training/ema.py",
        "diffusion/transport.py",
        "diffusion/model.py",
        "diffusion/layers.py",
    )

    def run(steps: int) -> list[str]:
        seen = []

        def record(method: str) -> None:
            frame = next((f for f in reversed(traceback.extract_stack()) if f.filename.startswith(package)), None)
            if frame is not None and frame.filename.replace("\\", "/").endswith(training_code):
                seen.append(f"{method} {Path(frame.filename).name}:{frame.lineno}")

        with on_tensor_readback(record):
            train_diffusion(
                _cfg(
                    cache,
                    tmp_path / f"run{steps}",
                    f"run.total_images={32 * steps}",
                    f"run.log_every_images={32 * steps}",
                    f"run.checkpoint_every_images={32 * steps}",
                    "data.num_workers=0",
                ),
                progress=False,
            )
        return seen

    short, long = run(4), run(12)
    assert sorted(short) == sorted(long), (short, long)
    assert len(long) <= 12, long  # a handful at start-up and at the one logging point, not per step
