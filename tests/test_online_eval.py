"""Evaluation while training (vfmvae.training.online_eval): rank-split metrics, resume, RNG isolation, weights.

Inception and LPIPS are small stand-ins (tests/dist/online_eval.py) so that these tests take seconds; the
evaluator, the tiny official-format tokenizer and the tiny REG model are the real ones.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from helpers import perturbed_reg_export, tiny_official_tokenizer  # noqa: E402
from online_eval import install_stubs, small_tokenizer  # noqa: E402

from vfmvae.training.eval_config import EvalConfig  # noqa: E402
from vfmvae.training.online_eval import build_evaluator, read_eval_records  # noqa: E402

SCRIPT = Path(__file__).parent / "dist" / "online_eval.py"
STATS = {"mean": [0.1] * 8, "std": [2.0] * 8}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """32-px held-out images and a 64-px reference batch."""
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("online")
    write_synthetic_dataset(SyntheticConfig(out=root / "data", num=12, classes=4, size=32), progress=False)
    rng = np.random.default_rng(0)
    np.savez(root / "ref.npz", arr_0=rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8))
    return {"data": root / "data" / "images", "ref": root / "ref.npz"}


@pytest.fixture
def official(tmp_path, models):
    """The tiny official tokenizer (64 px, 8x4x4 latents) and a tiny REG model on it."""
    tok = tiny_official_tokenizer(tmp_path / "tok")
    return {**models, "tok": tok, "dit": perturbed_reg_export(tmp_path / "dit", tok, STATS)}


@pytest.fixture
def stubs(monkeypatch):
    install_stubs(monkeypatch.setattr)


def _tokenizer():
    return small_tokenizer()


def _recon_cfg(models, **kw):
    return EvalConfig(
        **{
            "enabled": True,
            "every_images": 16,  # every 2 steps of 8
            "data": str(models["data"]),
            "num_images": 10,
            "batch_size": 10,
            "inception": "random-init:7",
            "lpips": "random-init:7",
            "grid": 4,
            **kw,
        }
    )


def _metrics(record):
    return {
        k: v
        for k, v in record.items()
        if k.startswith("eval/") and k not in ("eval/seconds", "eval/images_per_s", "eval/protocol")
    }


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_metrics_of_one(tmp_path, official):
    args = [
        "--tokenizer",
        str(official["tok"]),
        "--dit",
        str(official["dit"]),
        "--data",
        str(official["data"]),
        "--ref",
        str(official["ref"]),
    ]
    _run([sys.executable, str(SCRIPT), *args, "--root", str(tmp_path / "one"), "--out", str(tmp_path / "one.json")])
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(SCRIPT),
            *args,
            "--root",
            str(tmp_path / "two"),
            "--out",
            str(tmp_path / "two.json"),
        ]
    )
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for a, b in zip(one, two):
        assert set(_metrics(a)) == set(_metrics(b))
        for key, value in _metrics(a).items():
            if value is None:
                assert _metrics(b)[key] is None, key
            else:  # float summation order inside batched kernels differs (other batch composition per rank)
                assert _metrics(b)[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    recon, gen = one
    assert {k for k, v in _metrics(recon).items() if v is None} == set()  # every tokenizer metric computed
    assert recon["eval/psnr"] > 5 and 0 < recon["eval/rfid"] and 0 < recon["eval/lpips"]
    assert gen["eval/fid"] > 0 and gen["eval/precision"] is not None and gen["eval/protocol"]["preset"] == "reg-sde"
    # the reference statistics were cached once per run, the grid written by rank 0
    for run in ("one", "two"):
        assert len(list((tmp_path / run / "tok" / "eval").glob("reference-*.npz"))) == 1
        assert len(list((tmp_path / run / "dit" / "eval").glob("reference-*.npz"))) == 1
        assert (tmp_path / run / "tok" / "eval" / "grids" / "step-00000001.png").is_file()


def test_resume_neither_re_evaluates_nor_loses_finished_points(tmp_path, models, stubs):
    tok = _tokenizer()
    first = build_evaluator(_recon_cfg(models), tmp_path, kind="tokenizer")
    assert first.maybe_run(model=tok, step=1, images=8) is None  # not an evaluation point
    done = first.maybe_run(model=tok, step=2, images=16)
    task = first.task

    def killed(model, step):
        raise KeyboardInterrupt  # the run is killed in the middle of the evaluation at step 4

    task.evaluate = killed
    with pytest.raises(KeyboardInterrupt):
        first.maybe_run(model=tok, step=4, images=32)
    with open(tmp_path / "eval" / "records.jsonl", "a") as f:
        f.write('{"step": 4, "images": 3')  # and a record torn by the kill
    resumed = build_evaluator(_recon_cfg(models), tmp_path, kind="tokenizer")
    calls = []
    original = resumed.task.evaluate
    resumed.task.evaluate = lambda model, step: calls.append(step) or original(model, step)
    assert resumed.maybe_run(model=tok, step=2, images=16) is None  # finished before the kill
    again = resumed.maybe_run(model=tok, step=4, images=32)  # not finished: evaluated now
    assert calls == [4] and again is not None
    assert _metrics(again) == pytest.approx(_metrics(done))  # same model, same seeds
    assert [r["step"] for r in read_eval_records(tmp_path)] == [2, 4]
    # the reference statistics came from the cache written by the first run
    assert len(list((tmp_path / "eval").glob("reference-*.npz"))) == 1
    assert resumed.task._nets["inception"].calls == 10  # the 10 reconstructions; the originals' statistics were cached


def test_reference_cache_is_keyed_by_data_and_settings(tmp_path, models, stubs):
    tok = _tokenizer()
    build_evaluator(_recon_cfg(models), tmp_path, kind="tokenizer").maybe_run(model=tok, step=2, images=16)
    other = build_evaluator(_recon_cfg(models, crop="adm_center"), tmp_path, kind="tokenizer")
    other.maybe_run(model=tok, step=4, images=32)
    assert len(list((tmp_path / "eval").glob("reference-*.npz"))) == 2  # another crop: other originals, new key
    assert other.task._nets["inception"].calls == 2 * 10


def test_evaluation_leaves_weights_rng_and_modes_untouched(tmp_path, models, stubs):
    import random

    tok = _tokenizer().train()
    tok.mapping.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    modes = {name: m.training for name, m in tok.named_modules()}
    evaluator = build_evaluator(_recon_cfg(models), tmp_path, kind="tokenizer")
    original = evaluator.task.evaluate

    def drawing(model, step):  # as a metric network would (a random init, dropout): the global generators move
        torch.rand(5), np.random.rand(5), random.random()
        return original(model, step)

    evaluator.task.evaluate = drawing

    def draws():
        return torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random()

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert evaluator.maybe_run(model=tok, step=2, images=16) is not None
    assert draws() == expected
    assert {name: m.training for name, m in tok.named_modules()} == modes
    for key, value in tok.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_missing_weights_give_one_warning_and_skip(tmp_path, models, stubs, capfd):
    tok = _tokenizer()
    evaluator = build_evaluator(_recon_cfg(models, inception=None, lpips=None), tmp_path / "tok", kind="tokenizer")
    first = evaluator.maybe_run(model=tok, step=2, images=16)
    evaluator.maybe_run(model=tok, step=3, images=24)
    ours = [line for line in capfd.readouterr().err.splitlines() if "online evaluation" in line]  # one line
    assert len(ours) == 1 and "rfid and ris" in ours[0] and "lpips" in ours[0]
    assert first["eval/rfid"] is first["eval/ris"] is first["eval/lpips"] is None
    assert first["eval/psnr"] > 5 and first["eval/protocol"]["skipped"]
    # diffusion metrics all need the Inception: the evaluation is off, with one warning
    from vfmvae.sampling.pipeline import LatentStats

    gen = build_evaluator(
        EvalConfig(enabled=True, every_images=8, ref=str(models["ref"])),
        tmp_path / "dit",
        kind="diffusion",
        tokenizer=tok,
        latent_stats=LatentStats(torch.zeros(8), torch.ones(8)),
    )
    assert gen.maybe_run(model=None, step=1, images=8) is None
    assert len([line for line in capfd.readouterr().err.splitlines() if "eval.inception" in line]) == 1
    # a weights file that is named but not there is a mistake, not a reason to skip
    with pytest.raises(FileNotFoundError, match="eval.inception: weights file not found"):
        build_evaluator(_recon_cfg(models, inception=str(tmp_path / "nope.pth")), tmp_path / "x", kind="tokenizer")


def test_keep_best_keeps_the_best_model_and_never_replaces_a_foreign_folder(tmp_path, models, stubs):
    tok = _tokenizer()
    evaluator = build_evaluator(_recon_cfg(models, keep_best="psnr"), tmp_path, kind="tokenizer")
    values = iter([10.0, 12.0, 11.0])
    evaluator.task.evaluate = lambda model, step: ({"psnr": next(values)}, 10)
    for step in (2, 4, 6):
        evaluator.maybe_run(model=tok, step=step, images=8 * step)
    marker = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (marker["step"], marker["value"]) == (4, 12.0)
    assert (tmp_path / "best" / "config.json").is_file() and not list(tmp_path.glob(".best.*"))
    # after a restart the best so far comes from the records: a worse value does not replace it
    resumed = build_evaluator(_recon_cfg(models, keep_best="psnr"), tmp_path, kind="tokenizer")
    resumed.task.evaluate = lambda model, step: ({"psnr": 11.5}, 10)
    resumed.maybe_run(model=tok, step=8, images=64)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 4
    foreign = tmp_path / "other"
    (foreign / "best").mkdir(parents=True)
    (foreign / "best" / "mine.txt").write_text("not yours")
    with pytest.raises(FileExistsError, match="not written by eval.keep_best"):
        build_evaluator(_recon_cfg(models, keep_best="psnr"), foreign, kind="tokenizer")
    assert (foreign / "best" / "mine.txt").read_text() == "not yours"
    with pytest.raises(ValueError, match="not a tokenizer metric"):
        build_evaluator(_recon_cfg(models, keep_best="fid"), tmp_path / "y", kind="tokenizer")


def test_eval_section_is_validated_before_any_work(tmp_path):
    from vfmvae.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict(EvalConfig, {"enabled": True, "bogus": 1}, source="recipe.yaml")
    with pytest.raises(ValueError, match="eval.every_images"):
        EvalConfig(every_images=0)
    with pytest.raises(ValueError, match="eval.keep_best"):
        EvalConfig(keep_best="accuracy")
    with pytest.raises(ValueError, match="eval.data"):
        build_evaluator(EvalConfig(enabled=True), tmp_path, kind="tokenizer")
    with pytest.raises(FileNotFoundError, match="eval.ref"):
        build_evaluator(
            EvalConfig(enabled=True, ref=str(tmp_path / "none.npz")),
            tmp_path,
            kind="diffusion",
            tokenizer="tok",
            latent_stats=object(),
        )
    assert not build_evaluator(None, tmp_path, kind="tokenizer").active  # off by default


def _tokenizer_run(root: Path) -> Path:
    """A tokenizer run as training leaves it, with two evaluation points (one also logged in metrics.jsonl)."""
    run = root / "tok-run"
    (run / "eval" / "grids").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {batch_size: 8}\nloss: {kl: 1.0e-6}\n")
    lines = [
        {"step": s, "images": 8 * s, "loss/kl": 600.0 / s, "loss/rec": 0.2 - 0.001 * s, "loss/gan": -0.1 + 0.01 * s}
        for s in range(1, 41)
    ]
    protocol = {"inception_weights": "RANDOM-INIT (seed 0): not the FID Inception, values compare with nothing"}
    evals = [
        {
            "step": s,
            "images": 8 * s,
            "eval/psnr": 10.0 + s / 10,
            "eval/rfid": 50.0 - s / 2,
            "eval/seconds": 1.5,
            "eval/images_per_s": 6.7,
            "eval/protocol": protocol,
        }
        for s in (20, 40)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + evals[1:]))
    (run / "eval" / "records.jsonl").write_text(json.dumps(evals[0]) + "\n")
    from PIL import Image

    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(run / "eval" / "grids" / "step-00000040.png")
    return run


def test_report_draws_one_panel_per_term_against_images_and_the_evaluation_curves(tmp_path):
    from vfmvae.report import _eval_records, _records, _x_axis, build_report, panel_scale

    run = _tokenizer_run(tmp_path)
    page = build_report(run)
    text = page.read_text()
    assert "plots/tok-run-losses.png" in text and "plots/tok-run-eval.png" in text
    assert "eval/grids/step-00000040.png" in text and "RANDOM-INIT" in text
    assert (page.parent / "plots" / "tok-run-eval.png").stat().st_size > 5000
    # both evaluation points, from the evaluator's log and from metrics.jsonl
    assert [r["step"] for r in _eval_records(run, _records(run))] == [20, 40]
    # the KL falls over decades (log panel); the others stay linear on their own scale
    assert panel_scale([600.0 / s for s in range(1, 41)]) == "log"
    assert panel_scale([0.2 - 0.001 * s for s in range(1, 41)]) == "linear"
    assert panel_scale([-0.1, 0.3]) == "linear"
    # x is images: from the records, or step x batch size for diffusion logs written before records had images
    assert _x_axis([{"step": 3, "images": 24}], {})[0] == "images"
    label, x_of = _x_axis([{"step": 3}], {"run": {"batch_size": 32}})
    assert label.startswith("images") and x_of({"step": 3}) == 96
    assert _x_axis([{"step": 3}], {"run": {}})[0] == "step"


def test_report_with_evaluation_renders_in_chromium(tmp_path):
    pytest.importorskip("playwright")
    from vfmvae.report import build_report
    from vfmvae.report_check import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium found")
    result = check_page(build_report(_tokenizer_run(tmp_path)))
    assert result.ok, result.problems()
    assert result.images >= 3  # loss panels, evaluation panels, evaluation grid


# ------------------------------------------------------------------------------------------------------------------
# hooked into the trainers (the run object calls the evaluator after each step's logging)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def latent_cache(tiny_latent_cache):
    return tiny_latent_cache


def _diffusion_cfg(cache, run_dir, ref, *overrides):
    from vfmvae.config import load_config
    from vfmvae.diffusion_training import DiffusionTrainConfig

    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion" / "tiny.yaml",
        [
            f"data.cache={cache}",
            f"run.dir={run_dir}",
            "run.grid_every_images=0",
            "run.batch_size=8",
            "run.log_every_images=8",  # every step
            "run.checkpoint_every_images=16",
            f"eval.ref={ref}",
            "eval.num_samples=10",
            "eval.batch_size=10",
            "eval.inception=random-init:7",
            "eval.sampler={steps: 2}",
            *overrides,
        ],
    )


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "export" / "model.safetensors")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_diffusion_run_with_evaluation_trains_the_same_weights(tmp_path, models, latent_cache, stubs):
    from vfmvae.diffusion_training import train_diffusion

    common = ("run.total_images=32", "eval.every_images=16")
    train_diffusion(_diffusion_cfg(latent_cache, tmp_path / "off", models["ref"], *common), progress=False)
    train_diffusion(
        _diffusion_cfg(latent_cache, tmp_path / "on", models["ref"], *common, "eval.enabled=true"), progress=False
    )
    _assert_same_weights(_weights(tmp_path / "off"), _weights(tmp_path / "on"))
    assert [r["step"] for r in read_eval_records(tmp_path / "on")] == [2, 4]
    logged = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "eval/fid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval/seconds"] > 0 and r["images"] for r in evals)
    assert not (tmp_path / "off" / "eval").exists()


@pytest.mark.slow
def test_killed_diffusion_run_resumes_without_re_evaluating(tmp_path, models, latent_cache, stubs, monkeypatch):
    from vfmvae.diffusion_training import train_diffusion
    from vfmvae.training import online_eval as online

    evaluated = []
    original_evaluate = online.GenerationTask.evaluate

    def counted(self, model, step):
        evaluated.append(step)
        return original_evaluate(self, model, step)

    monkeypatch.setattr(online.GenerationTask, "evaluate", counted)
    original_maybe_run = online.OnlineEvaluator.maybe_run

    def killed_after_step_3(self, **kw):
        record = original_maybe_run(self, **kw)
        if kw["step"] == 3:
            raise KeyboardInterrupt  # the process dies right after evaluating step 3 (last checkpoint: step 2)
        return record

    cfg = _diffusion_cfg(
        latent_cache,
        tmp_path / "run",
        models["ref"],
        "run.total_images=48",
        "eval.every_images=24",
        "eval.enabled=true",
    )
    monkeypatch.setattr(online.OnlineEvaluator, "maybe_run", killed_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, progress=False)
    assert evaluated == [3] and [r["step"] for r in read_eval_records(tmp_path / "run")] == [3]
    monkeypatch.setattr(online.OnlineEvaluator, "maybe_run", original_maybe_run)
    train_diffusion(cfg, progress=False)  # resumes from step 2: passes step 3 again, evaluates only step 6
    assert evaluated == [3, 6]
    assert [r["step"] for r in read_eval_records(tmp_path / "run")] == [3, 6]
    train_diffusion(
        _diffusion_cfg(latent_cache, tmp_path / "straight", models["ref"], "run.total_images=48"), progress=False
    )
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "run"))


@pytest.mark.slow
def test_tokenizer_run_with_evaluation_trains_the_same_weights(tmp_path, synthetic_dir, stubs, capfd):
    from vfmvae.config import load_config
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    def cfg(run_dir, *extra):
        return load_config(
            TokenizerTrainConfig,
            ROOT / "configs" / "tokenizer" / "tiny.yaml",
            [
                f"run.dir={run_dir}",
                f"data.source={synthetic_dir / 'images'}",
                "data.num_workers=0",
                "run.batch_size=4",
                "run.total_images=8",
                "run.log_every_images=4",
                "run.grid_every_images=0",
                f"eval.data={synthetic_dir / 'images'}",
                "eval.num_images=10",
                "eval.batch_size=10",
                "eval.every_images=8",
                "eval.inception=random-init:7",
                "eval.grid=2",
                *extra,
            ],
        )

    train_tokenizer(cfg(tmp_path / "off"), progress=False)
    train_tokenizer(cfg(tmp_path / "on", "eval.enabled=true", "eval.keep_best=psnr"), progress=False)
    notices = [line for line in capfd.readouterr().err.splitlines() if "no eval.lpips" in line]
    assert len(notices) == 1 and notices[0].startswith("vfmvae: online evaluation:"), notices
    _assert_same_weights(_weights(tmp_path / "off"), _weights(tmp_path / "on"))
    (record,) = read_eval_records(tmp_path / "on")
    assert record["step"] == 2 and record["eval/psnr"] > 0 and record["eval/rfid"] is not None
    assert record["eval/lpips"] is None  # no eval.lpips: skipped
    assert (tmp_path / "on" / "eval" / "grids" / "step-00000002.png").is_file()
    assert json.loads((tmp_path / "on" / "best" / "best.json").read_text())["step"] == 2
