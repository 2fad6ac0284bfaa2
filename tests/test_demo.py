"""`make demo` = `vfmvae pipeline run configs/pipeline/demo.yaml`, at the smallest sizes that run every step.

One uninterrupted run (shared by the tests here) checks every step's wiring; a further run skips every step; one
changed setting makes exactly that step and the steps downstream of it stale. Then the same folder's diffusion
training and everything after it run again (`--from diffusion`), that run is killed (SIGKILL) inside the training
on the event of its first checkpoint, and the same command run again continues inside that step and ends with the
weights, samples and result table of the uninterrupted run.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vfmvae.pipeline import load_pipeline
from vfmvae.pipeline.runner import run_pipeline
from vfmvae.pipeline.status import pipeline_status
from vfmvae.pipeline.table import results_text

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "pipeline" / "demo.yaml"
# `make demo` trains 300 + 400 steps on 512 images; 2 + 2 steps on 32 images check every step's wiring
TINY = [
    "vars.images=32",
    "vars.heldout_images=16",
    "vars.reference_images=8",
    "vars.tokenizer_images=16",
    "vars.diffusion_images=64",
    "vars.samples=8",
    "vars.sample_steps=2",
    "vars.eval=false",
    "steps.diffusion.set.run.checkpoint_every_images=32",
    "steps.tokenizer.set.data.num_workers=0",
]
STEPS = [
    "data",
    "inspect-shards",
    "dirty",
    "inspect-dirty",
    "heldout",
    "inception",
    "ref-stats",
    "tokenizer-imported",
    "tokenizer-step0",
    "tokenizer",
    "recon-before",
    "recon-after",
    "latents",
    "diffusion",
    "samples",
    "eval-gen",
    "align",
    "align-report",
    "report",
]
WEIGHTS = ("tokenizer/export/model.safetensors", "diffusion/export/model.safetensors")

# In the child: after the diffusion run's first checkpoint is complete, say so and wait (inside the training step)
# for the SIGKILL.
KILLED_RUN = """
import sys
from vfmvae.checkpoint.training import CheckpointManager
from vfmvae.cli import main

save = CheckpointManager.save

def save_then_wait(self, step, **kwargs):
    path = save(self, step, **kwargs)
    if self.root.parent.name == "diffusion":
        print("CHECKPOINT", path, flush=True)
        sys.stdin.readline()
    return path

CheckpointManager.save = save_then_wait
sys.exit(main(sys.argv[1:]))
"""


def _pipeline(out, *more):
    return load_pipeline(RECIPE, [f"out={out}", *TINY, *more])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo recipe run once, uninterrupted, in-process; what it printed and its results, kept aside."""
    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(ROOT)  # the recipe names repository-relative recipes and test data, as `make demo` does
        run_pipeline(_pipeline(out))
    results = {
        "weights": {name: load_file(out / name) for name in WEIGHTS},
        "samples": np.load(out / "samples" / "samples.npz")["arr_0"],
        "table": results_text(out),
    }
    return out, printed.getvalue(), results


def test_demo_recipe_runs_every_step_then_skips_them_and_a_changed_setting_stales_its_downstream(demo_run):
    out, printed, _ = demo_run
    assert "3 skipped" in printed  # the broken files of the dirty copy: skipped and counted
    assert (out / "data" / "preview.png").is_file() and (out / "inspect-shards" / "shards_grid.png").is_file()
    recon = json.loads((out / "recon-after.json").read_text())
    assert recon["protocol"]["num_images"] == 16 and recon["psnr"] > 5 and recon["rfid"] is None
    samples = np.load(out / "samples" / "samples.npz")
    assert samples["arr_0"].shape == (8, 64, 64, 3) and samples["arr_1"].tolist() == list(range(8))
    gen = json.loads((out / "eval-gen" / "gen.json").read_text())
    assert gen["protocol"]["num_samples"] == 8 and gen["fid"] is not None
    table = results_text(out)
    assert "tiny tokenizer after training" in table and "CFG 2" in table
    summary = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["done"] * len(STEPS)
    assert [s["name"] for s in summary["steps"] if s["torchrun"]] == [
        "tokenizer-step0",
        "tokenizer",
        "latents",
        "diffusion",
        "samples",
    ]
    report = json.loads((out / "align-report" / "se_cknna.json").read_text())
    assert len(report["table"]) == 4 and any(m.startswith("diffusion:") for m in report["table"])
    # the report: the result table first, every image loads
    page = (out / "report" / "index.html").read_text()
    assert page.index("<h2>Results</h2>") < page.index("<h2>Data</h2>") and "Time per step" in page
    _assert_page_images_load(out / "report" / "index.html", minimum=8)

    # a further run skips every step and writes no record
    records = {p: p.stat().st_mtime_ns for p in (out / ".pipeline").glob("*.json") if p.name != "inputs.json"}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(ROOT)
        run_pipeline(_pipeline(out))
    assert printed.getvalue().count("done, skipped") == len(STEPS) and "0 step(s) run" in printed.getvalue()
    assert records == {p: p.stat().st_mtime_ns for p in records}

    # one changed setting: that step and exactly the steps downstream of it are stale
    statuses = pipeline_status(_pipeline(out, "steps.diffusion.set.optim.lr=0.002"))
    stale = [n for n in STEPS if statuses[n].state == "stale"]
    assert stale == ["diffusion", "samples", "eval-gen", "align-report", "report"]
    assert all(statuses[n].state == "done" for n in STEPS if n not in stale)
    assert "set.optim.lr" in statuses["diffusion"].reason


def _kill_inside_diffusion_training(out, log):
    argv = ["pipeline", "run", str(RECIPE), "--from", "diffusion", "--set", f"out={out}"]
    argv += [word for override in TINY for word in ("--set", override)]
    with open(log, "w") as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            for line in child.stdout:  # an event, not a clock: the line the child prints after its checkpoint
                if line.startswith("CHECKPOINT"):
                    break
            else:
                raise AssertionError(f"the run ended before its first diffusion checkpoint; see {log}")
        finally:
            child.kill()
            child.wait()
    return line.split()[1]


def test_demo_pipeline_killed_in_training_resumes_to_the_uninterrupted_result(demo_run, tmp_path, monkeypatch, capsys):
    out, _, uninterrupted = demo_run
    monkeypatch.chdir(ROOT)

    checkpoint = _kill_inside_diffusion_training(out, tmp_path / "killed.log")
    assert Path(checkpoint).name == "step-00000001"
    statuses = pipeline_status(_pipeline(out))
    assert statuses["diffusion"].state == "pending" and statuses["diffusion"].reason.startswith("interrupted")
    downstream = ["samples", "eval-gen", "align-report", "report"]
    assert [n for n in STEPS if statuses[n].state == "stale"] == downstream  # made from the earlier run
    assert all(statuses[n].state == "done" for n in STEPS if n not in ["diffusion", *downstream])

    run_pipeline(_pipeline(out), start="diffusion")  # the same command again: continues inside the interrupted step
    said = capsys.readouterr().out
    assert "== latents: done, skipped" in said and f"resumed from {checkpoint}" in said
    record = json.loads((out / ".pipeline" / "diffusion.json").read_text())
    assert record["state"] == "done" and record["attempts"] == 2

    for name in WEIGHTS:
        weights = load_file(out / name)
        assert weights.keys() == uninterrupted["weights"][name].keys(), name
        assert all(torch.equal(weights[k], uninterrupted["weights"][name][k]) for k in weights), name
    assert np.array_equal(np.load(out / "samples" / "samples.npz")["arr_0"], uninterrupted["samples"])
    assert results_text(out) == uninterrupted["table"]
    assert all(status.state == "done" for status in pipeline_status(_pipeline(out)).values())


def _assert_page_images_load(page, minimum):
    """Every <img> of the page resolves to a file that decodes as an image (what a browser would load)."""
    import re

    from PIL import Image

    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(sources) >= minimum, sources
    for src in sources:
        with Image.open(page.parent / src) as img:
            img.load()
            assert img.width > 16 and img.height > 16
