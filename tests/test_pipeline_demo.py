"""`make demo` = `vfmvae pipeline run configs/pipeline/demo.yaml`, at the smallest sizes that run every step.

One run is killed (SIGKILL) inside its tokenizer training, on the event of its first checkpoint, and run again: it
continues inside that step and ends with the weights, samples and result table of an uninterrupted run; a further
run skips every step; one changed setting makes exactly that step and the steps downstream of it stale.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    "steps.tokenizer.set.run.checkpoint_every=1",
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

# In the child: after the tokenizer run's first checkpoint is complete, say so and wait (inside the training step)
# for the SIGKILL.
KILLED_RUN = """
import sys
from vfmvae.checkpoint.training import CheckpointManager
from vfmvae.cli import main

save = CheckpointManager.save

def save_then_wait(self, step, **kwargs):
    path = save(self, step, **kwargs)
    if self.root.parent.name == "tokenizer":
        print("CHECKPOINT", path, flush=True)
        sys.stdin.readline()
    return path

CheckpointManager.save = save_then_wait
sys.exit(main(sys.argv[1:]))
"""


def _pipeline(out, *more):
    return load_pipeline(RECIPE, [f"out={out}", *TINY, *more])


def _tensors(path):
    return load_file(path)


def _same_tensors(a, b):
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _kill_inside_tokenizer_training(out, log):
    argv = ["pipeline", "run", str(RECIPE), "--set", f"out={out}", *(w for o in TINY for w in ("--set", o))]
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
                raise AssertionError(f"the run ended before its first tokenizer checkpoint; see {log}")
        finally:
            child.kill()
            child.wait()
    return line.split()[1]


def test_demo_pipeline_killed_in_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the recipe names repository-relative recipes and test data, as `make demo` does
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    checkpoint = _kill_inside_tokenizer_training(killed, tmp_path / "killed.log")
    assert Path(checkpoint).name == "step-00000001"
    statuses = pipeline_status(_pipeline(killed))
    assert [n for n in STEPS if statuses[n].state == "done"] == STEPS[: STEPS.index("tokenizer")]
    assert statuses["tokenizer"].state == "pending" and statuses["tokenizer"].reason.startswith("interrupted")

    run_pipeline(_pipeline(killed))  # continues inside the interrupted step
    said = capsys.readouterr().out
    assert "== tokenizer-step0: done, skipped" in said and f"resumed from {checkpoint}" in said
    record = json.loads((killed / ".pipeline" / "tokenizer.json").read_text())
    assert record["state"] == "done" and record["attempts"] == 2

    run_pipeline(_pipeline(whole))
    said = capsys.readouterr().out
    assert "3 skipped" in said  # the broken files of the dirty copy: skipped and counted
    for name in ("tokenizer/export/model.safetensors", "diffusion/export/model.safetensors"):
        assert _same_tensors(killed / name, whole / name), name
    a, b = np.load(killed / "samples" / "samples.npz"), np.load(whole / "samples" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and a["arr_1"].tolist() == list(range(8))
    table = results_text(whole)
    assert table == results_text(killed) and "tiny tokenizer after training" in table and "CFG 2" in table
    gen = json.loads((whole / "eval-gen" / "gen.json").read_text())
    assert gen["protocol"]["num_samples"] == 8 and gen["fid"] is not None

    # a further run skips every step and writes no record
    records = {p: p.stat().st_mtime_ns for p in (killed / ".pipeline").glob("*.json") if p.name != "inputs.json"}
    run_pipeline(_pipeline(killed))
    said = capsys.readouterr().out
    assert said.count("done, skipped") == len(STEPS) and "0 step(s) run" in said
    assert records == {p: p.stat().st_mtime_ns for p in records}

    # one changed setting: that step and exactly the steps downstream of it are stale
    statuses = pipeline_status(_pipeline(killed, "steps.diffusion.set.optim.lr=0.002"))
    stale = [n for n in STEPS if statuses[n].state == "stale"]
    assert stale == ["diffusion", "samples", "eval-gen", "align-report", "report"]
    assert all(statuses[n].state == "done" for n in STEPS if n not in stale)
    assert "set.optim.lr" in statuses["diffusion"].reason

    # the report: the result table first, every image loads
    page = (whole / "report" / "index.html").read_text()
    assert page.index("<h2>Results</h2>") < page.index("<h2>Data</h2>") and "Time per step" in page
    report = json.loads((whole / "align-report" / "se_cknna.json").read_text())
    assert len(report["table"]) == 4 and any(m.startswith("diffusion:") for m in report["table"])
    _assert_page_images_load(whole / "report" / "index.html", minimum=8)


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
