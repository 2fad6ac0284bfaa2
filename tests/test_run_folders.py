"""A training run folder belongs to one run (recipe, kind, fresh start, lock, incomplete or corrupted
checkpoints), and nothing is written into it before the checks pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vfmvae.checkpoint import CheckpointFormatError
from vfmvae.config import load_config
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion
from vfmvae.training.run_folder import RunFolderError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tiny_latent_cache):
    return tiny_latent_cache


def _cfg(cache, run_dir, *overrides):
    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion" / "tiny.yaml",
        [
            f"data.cache={cache}",
            f"run.dir={run_dir}",
            "run.grid_every_images=0",
            "data.flip=false",
            "run.batch_size=8",
            "run.total_images=16",
            "run.checkpoint_every_images=8",  # every step
            "run.log_every_images=8",
            *overrides,
        ],
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished_run(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    return run


def test_changed_recipe_is_refused_and_nothing_is_written(cache, finished_run):
    before = _snapshot(finished_run)
    with pytest.raises(RunFolderError, match=r"run\.batch_size: 8 -> 16.*--resume fresh"):
        train_diffusion(_cfg(cache, finished_run, "run.batch_size=16"), progress=False)
    with pytest.raises(RunFolderError, match=r"optim\.lr"):
        train_diffusion(_cfg(cache, finished_run, "optim.lr=0.5"), progress=False)
    assert _snapshot(finished_run) == before


def test_another_kind_of_run_is_refused_before_writing(finished_run, synthetic_dir):
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    before = _snapshot(finished_run)
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs" / "tokenizer" / "tiny.yaml",
        [f"run.dir={finished_run}", f"data.source={synthetic_dir / 'images'}"],
    )
    with pytest.raises(RunFolderError, match="another kind of run"):
        train_tokenizer(cfg, progress=False)
    assert _snapshot(finished_run) == before


def test_resume_none_is_refused_and_fresh_starts_over(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match="--resume none.*checkpoints.*--resume fresh"):
        train_diffusion(_cfg(cache, run, "run.total_images=8"), resume="none", progress=False)
    assert _snapshot(run) == before
    (run / "my-notes.txt").write_text("keep me")
    train_diffusion(_cfg(cache, run, "run.total_images=4", "run.batch_size=4"), resume="fresh", progress=False)
    assert (run / "my-notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]  # the old run's are gone
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "batch_size: 4" in (run / "config.yaml").read_text()


def test_a_second_process_on_the_same_run_folder_is_refused(cache, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from vfmvae.training.run_folder import "
            f"RunFolderLock; Path({str(run)!r}).mkdir(); lock = RunFolderLock(Path({str(run)!r})); print('locked', "
            "flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # an observed event, not a clock
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            train_diffusion(_cfg(cache, run), progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.communicate("", timeout=60)
    train_diffusion(_cfg(cache, run), progress=False)  # the lock went with its process
    assert (run / "export" / "model.safetensors").is_file()


def test_checkpoints_without_meta_are_refused_not_restarted(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "meta.json").unlink()
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"2 checkpoint folder\(s\).*none is complete.*--resume PATH"):
        train_diffusion(_cfg(cache, run, "run.total_images=32"), progress=False)
    assert _snapshot(run) == before


def test_a_same_size_corruption_of_checkpoint_weights_is_detected(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of one weight; the size stays the same
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="model.safetensors: sha256 differs.*corrupted"):
        train_diffusion(_cfg(cache, run, "run.total_images=32"), progress=False)


def test_resume_fresh_deletes_exactly_what_its_help_names(tmp_path, capsys):
    """`--resume fresh` removes exactly the outputs its help names (checkpoints, metrics, grids, exports, tensorboard,
    RUN/eval and RUN/best: a new run must not take the old run's evaluation points as done) and keeps the rest (a
    user's RUN/samples, old snapshots, their own files)."""
    from vfmvae.cli import build_parser
    from vfmvae.training.run_folder import RUN_OUTPUTS, claim_run_folder

    run = tmp_path / "run"
    for name in ("checkpoints/step-00000002", "grids", "exports/images-000000000016", "eval", "best", "tensorboard"):
        (run / name).mkdir(parents=True)
        (run / name / "file").write_text("x")
    (run / "export").symlink_to(Path("exports") / "images-000000000016")
    for name in ("metrics.jsonl", "config.yaml", "my-notes.txt"):
        (run / name).write_text("x")
    for name in ("samples", "snapshots"):  # a user's `vfmvae sample --out RUN/samples`; old runs' grid folders
        (run / name).mkdir()
        (run / name / "settings.json").write_text("{}")
    for sub in ("tokenizer", "diffusion"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", sub, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        fresh = text[text.index("fresh (") :]
        for name in RUN_OUTPUTS:  # every name it deletes is in the help
            assert name in fresh, (sub, name)
    claim_run_folder(run, config={}, resume="fresh").release()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "my-notes.txt", "samples", "snapshots"]
    assert (run / "samples" / "settings.json").is_file() and (run / "snapshots" / "settings.json").is_file()
    out = capsys.readouterr().out
    assert "removed checkpoints, metrics.jsonl, grids, export, exports, eval, best, tensorboard, config.yaml" in out
    assert "kept samples, snapshots" in out


def test_training_longer_keeps_the_export_others_built_on(cache, tmp_path):
    """Raising run.total_images adds an export: each export has its own folder, RUN/export points at the newest, and
    what a cache or sample folder recorded (the resolved path and the content digest) stays as it was."""
    from vfmvae.checkpoint.digest import model_folder_digest

    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run, "run.total_images=8"), progress=False)
    first = (run / "export").resolve()  # what `cache-latents` / `sample` record for --tokenizer/--diffusion RUN/export
    digest = model_folder_digest(run / "export")
    assert first == run / "exports" / "images-000000000008" and (run / "export").is_symlink()
    train_diffusion(_cfg(cache, run, "run.total_images=16"), progress=False)  # continued: an allowed change
    assert (run / "export").resolve() == run / "exports" / "images-000000000016"
    assert model_folder_digest(run / "export") != digest
    assert model_folder_digest(first) == digest  # the first export is still there, unchanged
    assert sorted(p.name for p in (run / "exports").iterdir()) == ["images-000000000008", "images-000000000016"]


def test_an_export_written_before_versioning_is_moved_aside_not_replaced(tmp_path):
    from vfmvae.training.exports import publish_export

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "config.json").write_text("old")
    (run / "export" / "training.json").write_text('{"images_total": 2400}')
    publish_export(run, 4800, lambda folder: (folder.mkdir(), (folder / "config.json").write_text("new")))
    assert (run / "export" / "config.json").read_text() == "new"
    assert (run / "exports" / "unversioned-images-total-000000002400" / "config.json").read_text() == "old"
    publish_export(run, 4800, lambda folder: (folder / "config.json").write_text("new again"))  # the same length
    assert sorted(p.name for p in (run / "exports").iterdir()) == [
        "images-000000004800",
        "unversioned-images-total-000000002400",
    ]
