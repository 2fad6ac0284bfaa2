"""The run object both trainers share (vfmvae.training.run), the one `run:` section (vfmvae.training.config) and
the refusal of older run keys with the value to write instead."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from vfmvae.config import ConfigError, load_config
from vfmvae.diffusion_training import DiffusionTrainConfig
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.training import EMA
from vfmvae.training.config import DiffusionRunConfig, RunConfig, halflife_from_decay
from vfmvae.training.run import TrainingRun, cadence_due, micro_batch_plan
from vfmvae.training.state import CheckpointState

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _Recipe:
    run: RunConfig = field(default_factory=RunConfig)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _FakeEvaluator:
    """Records its calls; returns a record every `every` steps."""

    def __init__(self, every: int) -> None:
        self.every, self.calls = every, []

    def maybe_run(self, *, model, step, images):
        self.calls.append((model, step, images))
        return {"eval/fake": float(step)} if step % self.every == 0 else None


def _drive(tmp_path: Path, *, applied: list[float], evaluator=None, **run_fields):
    """A run of a tiny linear model whose step i is applied (1.0) or skipped (0.0) as `applied[i]` says, driven as
    the trainers drive it; reports every 2 steps, grids every 3, no checkpoint before the end."""
    cfg = RunConfig(
        dir=tmp_path / "run",
        batch_size=4,
        total_images=4 * len(applied),
        precision="fp32",
        log_every_images=8,
        grid_every_images=12,
        checkpoint_every_images=400,
        device="cpu",
        ema_halflife_images=8,
        **run_fields,
    )
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    ema = EMA(model, cfg.ema_halflife_images, cfg.ema_rampup)
    grids = []
    with TrainingRun.open(cfg, _Recipe(cfg), kind="test", progress=False, evaluator=evaluator) as run:
        assert run.resume() is None
        state = CheckpointState(model=model, ema=ema)
        run.start(trainable_parameters=6, dataset_size=10, skip_counters=("skipped_steps",))
        while run.running:
            with torch.no_grad():
                model.weight.add_(1.0)
            run.scalars["loss"] = torch.tensor(float(run.step))
            applied_t = torch.tensor(applied[run.step])
            run.count_step({"skipped_steps": applied_t})
            ema.update(model, run.images_total, cfg.batch_size, applied=applied_t)
            if run.report_due:
                run.report({"extra": 1})
            if run.grid_due:
                grids.append(run.grid_path())
            run.evaluate(ema.model)
            if run.checkpoint_due:
                run.save(state)
        summary = run.finish(state)
    saves = [int(path.name.removeprefix("step-")) for path in run.manager.list()]  # the steps saved (and kept)
    return run, grids, [summary, saves, ema]


def test_the_run_logs_step_and_images_cadences_grids_and_final_save(tmp_path, capsys):
    run, grids, (summary, saves, ema) = _drive(tmp_path, applied=[1.0] * 5)
    records = _records(tmp_path / "run")
    assert [(r["step"], r["images"]) for r in records] == [(2, 8), (4, 16), (5, 20)]  # log_every 2 and the end
    assert all(r["extra"] == 1 and "images_per_s" in r and r["skipped_steps"] == 0 for r in records)
    assert records[0]["loss"] == 1.0  # the step body's scalars, read back when logged
    assert grids == [tmp_path / "run" / "grids" / "step-00000003.png", tmp_path / "run" / "grids" / "step-00000005.png"]
    assert saves == [5] and summary["steps"] == 5 and summary["images"] == 20
    assert (tmp_path / "run" / "config.yaml").is_file()
    out = capsys.readouterr().out
    assert "test training: device cpu, 1 process(es), run folder" in out and "dataset 10 images" in out
    assert "6 trainable parameters" in out and "wall time" in out and "5 steps, 20 images" in out


def test_consecutive_skipped_steps_stop_the_run_and_isolated_ones_do_not(tmp_path):
    # a skipped step in between resets the consecutive count: 2 + 2 skips with max 3 pass
    run, _, (summary, _, _) = _drive(tmp_path / "a", applied=[0, 0, 1, 0, 0, 1], max_consecutive_nonfinite=3)
    assert summary["skipped_steps"] == 4
    with pytest.raises(RuntimeError, match=r"3 consecutive skipped steps by step 4; stopping"):
        _drive(tmp_path / "b", applied=[1, 0, 0, 0, 1, 1], max_consecutive_nonfinite=3)


def test_a_skipped_step_leaves_the_ema_alone(tmp_path):
    _, _, (_, _, ema) = _drive(tmp_path / "a", applied=[1.0, 0.0])
    _, _, (_, _, ema_one) = _drive(tmp_path / "b", applied=[1.0])
    # the second (skipped) step must not blend the (moved) weights into the average
    torch.testing.assert_close(ema.model.weight, ema_one.model.weight)


def test_the_evaluator_hook_sees_the_ema_model_every_step_and_its_records_are_logged(tmp_path):
    fake = _FakeEvaluator(every=2)
    _, _, (_, _, ema) = _drive(tmp_path, applied=[1.0] * 5, evaluator=fake)
    assert [(step, images) for _, step, images in fake.calls] == [(s, 4 * s) for s in range(1, 6)]
    assert all(model is ema.model for model, _, _ in fake.calls)
    evals = [r for r in _records(tmp_path / "run") if "eval/fake" in r]
    assert [(r["step"], r["images"], r["eval/fake"]) for r in evals] == [(2, 8, 2.0), (4, 16, 4.0)]


def test_micro_batch_arithmetic_has_one_error_naming_both_keys():
    assert micro_batch_plan(RunConfig(batch_size=16, micro_batch=2), world=2) == (2, 4)
    assert micro_batch_plan(RunConfig(batch_size=16), world=4) == (4, 1)
    with pytest.raises(ConfigError, match=r"run.batch_size 16 is not a multiple of processes \(3\) x run.micro_batch"):
        micro_batch_plan(RunConfig(batch_size=16, micro_batch=2), world=3)


def test_both_recipes_share_the_run_section():
    shared = {f for f in RunConfig.__dataclass_fields__}
    assert shared <= set(DiffusionRunConfig.__dataclass_fields__)
    assert TokenizerTrainConfig.__dataclass_fields__["run"].default_factory is RunConfig
    assert DiffusionTrainConfig.__dataclass_fields__["run"].default_factory is DiffusionRunConfig
    # the diffusion default EMA is the former per-step 0.9999 at batch 1024
    assert 0.5 ** (1024 / DiffusionRunConfig().ema_halflife_images) == pytest.approx(0.9999, abs=1e-9)


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "run.total_steps=400",
            "run.total_steps is no longer a recipe key: run length is in images now: "
            "write run.total_images: 12800 (400 steps x batch 32)",
        ),
        ("run.ema_decay=0.99", "write run.ema_halflife_images: 2207 (batch 32 x ln(0.5) / ln(0.99))"),
        (
            "run.sample_every=50",
            "run.sample_every is no longer a recipe key: cadences are in images now: write run.grid_every_images: "
            "1600 (50 steps x batch 32)",
        ),
        ("run.sample_steps=10", "write run.grid_steps: 10"),
        ("run.log_every=20", "write run.log_every_images: 640 (20 steps x batch 32)"),
        ("run.checkpoint_every=100", "write run.checkpoint_every_images: 3200 (100 steps x batch 32)"),
        (
            "eval.every=50",
            "eval.every is no longer a recipe key: cadences are in images now: write eval.every_images: 1600 "
            "(50 steps x batch 32)",
        ),
        ("optim.warmup_steps=10", "write optim.warmup_images: 320 (10 steps x batch 32)"),
    ],
)
def test_older_diffusion_run_keys_are_refused_with_the_value_to_write(override, expected, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/tiny.yaml", [f"data.cache={tmp_path}", override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_older_tokenizer_run_key_is_refused_with_the_value_to_write(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"run.snapshot_every is no longer a recipe key: cadences are in images now: write "
        r"run.grid_every_images: 56 \(7 steps x batch 8\)",
    ):
        load_config(
            TokenizerTrainConfig,
            ROOT / "configs/tokenizer/tiny.yaml",
            [f"data.source={tmp_path}", "run.snapshot_every=7"],
        )


def test_the_tokenizer_eval_cadence_in_steps_is_refused_with_the_batch_of_the_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"write eval.every_images: 80 \(10 steps x batch 8\)"):
        load_config(
            TokenizerTrainConfig, ROOT / "configs/tokenizer/tiny.yaml", [f"data.source={tmp_path}", "eval.every=10"]
        )


@pytest.mark.parametrize("trainer", ["diffusion", "tokenizer"])
@pytest.mark.parametrize("key", ["log_every", "grid_every", "checkpoint_every"])
def test_an_older_recipe_hears_of_its_step_cadences_before_its_data_path(trainer, key, tmp_path):
    """An older recipe on a machine without its data: the first line names the new key, not the missing path."""
    cls, path_key = (
        (DiffusionTrainConfig, "data.cache") if trainer == "diffusion" else (TokenizerTrainConfig, "data.source")
    )
    overrides = [f"{path_key}={tmp_path / 'missing'}", f"run.{key}=3"]
    with pytest.raises(ConfigError) as err:
        load_config(cls, ROOT / f"configs/{trainer}/tiny.yaml", overrides)
    message = str(err.value)
    assert f"run.{key} is no longer a recipe key" in message and f"write run.{key}_images: " in message, message
    assert "does not exist" not in message and "\n" not in message


def test_a_cadence_is_due_at_the_step_whose_images_reach_each_multiple():
    due = lambda every, batch: [s for s in range(1, 13) if cadence_due(every, s, batch)]  # noqa: E731
    assert due(8, 4) == [2, 4, 6, 8, 10, 12]  # a multiple of the batch: every 2 steps, as before in steps
    assert due(10, 4) == [3, 5, 8, 10]  # 12, 20, 32, 40 images: once per 10 images, never skipped
    assert due(1, 4) == list(range(1, 13))  # less than a batch: every step
    assert due(0, 4) == []  # 0: never


def test_the_warm_up_in_images_is_the_former_warm_up_in_steps():
    from vfmvae.diffusion_training.config import DiffusionOptimConfig
    from vfmvae.diffusion_training.trainer import learning_rate_schedule

    optim, batch, steps = DiffusionOptimConfig(lr=3e-4, warmup_images=7 * 24), 24, 7
    former = [3e-4 * min(1.0, (step + 1) / steps) for step in range(10)]  # lr of step `step` (0-based)
    assert [learning_rate_schedule(optim, (step + 1) * batch) for step in range(10)] == former
    assert learning_rate_schedule(DiffusionOptimConfig(lr=3e-4), 24) == 3e-4


def test_a_run_folder_of_the_step_cadences_resumes_with_the_recipe_in_images(tmp_path):
    """A run written when cadences counted steps (its config.yaml has log_every, eval.every, optim.warmup_steps) is
    the same run as its recipe in images; a real difference is still refused."""
    import yaml

    from vfmvae.config import config_to_dict
    from vfmvae.training.run_folder import RunFolderError, claim_run_folder

    cfg = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/tiny.yaml", [f"data.cache={tmp_path}"])
    old = config_to_dict(cfg)
    batch = old["run"]["batch_size"]
    for key in ("log_every", "grid_every", "checkpoint_every"):
        old["run"][key] = old["run"].pop(f"{key}_images") // batch
    old["eval"]["every"] = 10_000  # the former default, in steps (eval.every_images may change on resume)
    del old["eval"]["every_images"]
    old["optim"]["warmup_steps"] = old["optim"].pop("warmup_images") // batch
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    claim_run_folder(run_dir, cfg, "auto").release()
    old["optim"]["warmup_steps"] = 5  # 160 images: the recipe's 0 is another run
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(RunFolderError, match=r"optim.warmup_images: 160 -> 0"):
        claim_run_folder(run_dir, cfg, "auto")


def test_halflife_conversion_reproduces_the_per_step_decay():
    for decay, batch in ((0.9999, 1024), (0.99, 32), (0.999, 256)):
        assert 0.5 ** (batch / halflife_from_decay(decay, batch)) == pytest.approx(decay, rel=1e-12)


def test_both_trainers_write_the_checkpoint_layout_that_earlier_runs_resume_from(
    tmp_path, synthetic_dir, tiny_latent_cache
):
    """The named checkpoint state writes what the hand-built dicts wrote (main's trainers, safe_loss_d included):
    the same files, the same keys."""
    from vfmvae.checkpoint import CheckpointManager
    from vfmvae.diffusion_training import train_diffusion
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    tokenizer = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny.yaml",
        [f"data.source={synthetic_dir / 'images'}", f"run.dir={tmp_path / 'tok'}", "data.num_workers=0"]
        + ["run.batch_size=2", "run.total_images=2", "run.grid_every_images=0"],
    )
    train_tokenizer(tokenizer, progress=False)
    ckpt = CheckpointManager(tmp_path / "tok").load()
    assert set(ckpt.state) == {"disc", "opt_g", "opt_d", "counters", "safe_loss", "safe_loss_d"}
    assert set(ckpt.state["counters"]) == {"skipped_g", "skipped_d", "images_before_stage"}
    assert set(ckpt.rank_state) == {"data", "rng"} and "config" in ckpt.meta
    assert ckpt.model and not any(k.startswith("vfm.") for k in [*ckpt.model, *ckpt.ema])  # the VFM is rebuilt
    diffusion = load_config(
        DiffusionTrainConfig,
        ROOT / "configs/diffusion/tiny.yaml",
        [f"data.cache={tiny_latent_cache}", f"run.dir={tmp_path / 'dit'}", "data.num_workers=0"]
        + ["run.batch_size=8", "run.total_images=8", "run.grid_every_images=0"],
    )
    train_diffusion(diffusion, progress=False)
    ckpt = CheckpointManager(tmp_path / "dit").load()
    assert set(ckpt.state) == {"opt", "counters"} and set(ckpt.state["counters"]) == {"skipped_steps"}
    assert set(ckpt.rank_state) == {"rng"} and ckpt.ema.keys() == ckpt.model.keys()


def test_restore_puts_the_safe_loss_references_on_the_runs_device_and_starts_absent_parts_empty():
    """The guards' state is loaded onto the device their next comparisons run on (a stand-in device here, "meta");
    a guard that a checkpoint predates (safe_loss_d) starts empty."""
    from vfmvae.checkpoint.training import TrainingCheckpoint
    from vfmvae.tokenizer_training.losses import DiscriminatorGuard, SafeLossGuard
    from vfmvae.training.state import OnDevice, restore

    model = nn.Linear(2, 2)
    guard, discriminator_guard = SafeLossGuard(), DiscriminatorGuard()
    device = torch.device("meta")
    shared = {"safe_loss": OnDevice.wrap(guard, device), "safe_loss_d": OnDevice.wrap(discriminator_guard, device)}
    state = CheckpointState(model=model, ema=EMA(model, 100.0), shared=shared)
    saved = {"rejected": torch.tensor(3), "prev.l1": torch.tensor(0.5)}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = TrainingCheckpoint(Path("ckpt"), 1, 4, weights, weights, {"safe_loss": saved}, {})
    restore(state, ckpt)
    assert guard.rejected.device == device and guard.prev["l1"].device == device
    assert discriminator_guard.rejected is None
    assert OnDevice.wrap(None, device) is None  # a guard that is off: nothing to save or restore
