"""`vfmvae pipeline`: recipes, command lines, done / stale / pending, --redo / --from, and what it never touches.

A small recipe of cheap commands (tiny synthetic sets, their inspection, the equivariance transforms) exercises the
runner; tests/test_demo.py runs the demo recipe end to end.
"""

import json
import logging
from pathlib import Path

import pytest

from vfmvae.cli import main
from vfmvae.config import ConfigError
from vfmvae.pipeline import load_pipeline
from vfmvae.pipeline.runner import PipelineError, run_pipeline
from vfmvae.pipeline.status import pipeline_status

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "pipeline").glob("*.yaml"))

SMALL = """
out: {out}
vars: {{seed: 0}}
steps:
  images:
    run: data synthetic
    options: {{recipe: {data_recipe}}}
    set: {{out: "{{dir}}", seed: "{{vars.seed}}"}}
  other:
    run: data synthetic
    options: {{out: "{{dir}}", num: 4, classes: 2, size: 16, seed: 5}}
  inspect:
    run: data inspect
    options: {{data: "{{steps.images}}/images", resolution: 16, json: "{{dir}}/report.json"}}
  transforms:
    run: align transforms
    options: {{data: "{{steps.images}}/images", out: "{{dir}}", size: 16}}
"""


@pytest.fixture
def small(tmp_path):
    data_recipe = tmp_path / "synthetic.yaml"
    data_recipe.write_text("num: 8\nclasses: 2\nsize: 16\nshards: false\n")
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL.format(out=tmp_path / "out", data_recipe=data_recipe))
    return recipe


def _states(recipe, *overrides):
    statuses = pipeline_status(load_pipeline(recipe, list(overrides)))
    return {name: status.state for name, status in statuses.items()}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_shipped_recipes_load_and_every_command_line_parses(recipe):
    pipeline = load_pipeline(recipe)  # parses each step's argv with its command's own parser
    names = [s.name for s in pipeline.steps]
    assert names[-1] == "report" and set(pipeline.step("report").deps) == set(names[:-1])
    for step in pipeline.steps:
        assert step.command_line().startswith(("vfmvae ", "python -m vfmvae."))
        assert (step.torchrun_line() is not None) == (
            step.spec.run in ("train tokenizer", "train diffusion", "sample", "cache-latents")
        )
    results = [s for s in pipeline.steps if s.result is not None]
    assert results and all(s.spec.run in ("eval recon", "eval gen") for s in results)


def test_paper_recipes_chain_their_stages_and_render_torchrun_lines():
    pipeline = load_pipeline(ROOT / "configs" / "pipeline" / "paper-reg.yaml", ["resources.nodes=4"])
    stage1 = pipeline.step("tokenizer-stage1")
    assert stage1.deps == ("tokenizer-stage0",) and "init=runs/paper-reg/tokenizer-stage0/export" in stage1.argv
    later = pipeline.step("diffusion-640ep")
    assert "start_from=runs/paper-reg/diffusion-80ep" in later.argv and "diffusion-80ep" in later.deps
    assert later.torchrun_line().startswith(
        "torchrun --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=$MASTER_HOST:29500 "
        "--rdzv-id=diffusion-640ep -m vfmvae train diffusion --recipe configs/diffusion/reg-sit-xl1.yaml"
    )
    assert pipeline.step("eval-gen-80ep-nocfg").torchrun_line() is None
    assert "--preset reg-sde-80ep" in pipeline.step("sample-80ep-nocfg").command_line()
    assert pipeline.descendants("diffusion-640ep") == [
        "sample-640ep-cfg",
        "sample-640ep-nocfg",
        "eval-gen-640ep-cfg",
        "eval-gen-640ep-nocfg",
        "report",
    ]
    ldit = load_pipeline(ROOT / "configs" / "pipeline" / "paper-lightningdit.yaml")
    stage1 = ldit.step("diffusion-stage1")
    assert "--recipe configs/diffusion/lightningdit-xl1-stage1.yaml" in stage1.command_line()
    assert "start_from=runs/paper-lightningdit/diffusion-stage0" in stage1.argv


def test_recipe_errors_name_the_key(small, tmp_path):
    text = small.read_text()
    cases = {
        "steps.inspect.option": text.replace(
            '    options: {data: "{steps.images}', '    option: {data: "{steps.images}'
        ),
        "{steps.nope}": text.replace('{steps.images}/images", resolution', '{steps.nope}/images", resolution'),
        "{vars.colour}": text.replace("{vars.seed}", "{vars.colour}"),
        "unrecognized arguments: --resolutio": text.replace("resolution: 16, json", "resolutio: 16, json"),
    }
    for expected, recipe in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(recipe)
        with pytest.raises(ConfigError, match=expected.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
            load_pipeline(path)
    with pytest.raises(ConfigError, match="no step named 'inspekt'"):
        load_pipeline(small).step("inspekt")


def test_run_skips_done_steps_refuses_stale_ones_and_reruns_on_request(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["pipeline", "run", str(small)]) == 0
    assert _states(small) == dict.fromkeys(["images", "other", "inspect", "transforms"], "done")
    summary = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["done"] * 4 and summary["steps"][2]["seconds"] > 0
    records = {p.name: p.stat().st_mtime_ns for p in (out / ".pipeline").glob("*.json")}
    capsys.readouterr()

    assert main(["pipeline", "run", str(small)]) == 0  # a second run skips everything
    said = capsys.readouterr().out
    assert said.count("done, skipped") == 4 and "0 step(s) run" in said
    assert records == {p.name: p.stat().st_mtime_ns for p in (out / ".pipeline").glob("*.json")}

    # one changed setting: that step and exactly its downstream steps are stale, and nothing runs without asking
    assert _states(small, "vars.seed=3") == {
        "images": "stale",
        "other": "done",
        "inspect": "stale",
        "transforms": "stale",
    }
    with pytest.raises(PipelineError, match="stale, not run: images .*--from images"):
        run_pipeline(load_pipeline(small, ["vars.seed=3"]))
    with pytest.raises(
        PipelineError, match="stale, not run: inspect .*and transforms after it"
    ):  # --redo images leaves them stale
        run_pipeline(load_pipeline(small, ["vars.seed=3"]), redo=["images"])
    assert _states(small) == dict.fromkeys(["images", "other", "inspect", "transforms"], "done")  # nothing ran
    before = (out / "other" / "dataset.json").stat().st_mtime_ns
    run_pipeline(load_pipeline(small, ["vars.seed=3"]), start="images")
    assert _states(small, "vars.seed=3") == dict.fromkeys(["images", "other", "inspect", "transforms"], "done")
    assert (out / "other" / "dataset.json").stat().st_mtime_ns == before  # not downstream: not run again
    assert json.loads((out / "images" / "dataset.json").read_text())["seed"] == 3

    # --redo of a done step re-runs it; what reads its outputs is then stale and is not run without --from
    with pytest.raises(PipelineError, match="step inspect is now stale .*ran again.*--from inspect"):
        run_pipeline(load_pipeline(small, ["vars.seed=3"]), redo=["images"])


def test_inputs_and_outputs_changed_outside_the_pipeline_make_a_step_stale(small, tmp_path):
    run_pipeline(load_pipeline(small))
    data_recipe = tmp_path / "synthetic.yaml"
    data_recipe.write_text(data_recipe.read_text() + "seed: 0\n")  # same values, another file: its content counts
    statuses = pipeline_status(load_pipeline(small))
    assert statuses["images"].state == "stale" and f"input {data_recipe} changed" in statuses["images"].reason
    run_pipeline(load_pipeline(small), start="images")
    (tmp_path / "out" / "inspect" / "report.json").write_text("{}")
    statuses = pipeline_status(load_pipeline(small))
    assert (
        statuses["inspect"].state == "stale" and statuses["inspect"].reason == "its outputs changed after it finished"
    )
    (tmp_path / "out" / "transforms" / "manifest.json").unlink()
    assert pipeline_status(load_pipeline(small))["transforms"].state == "stale"


def test_a_folder_the_pipeline_did_not_write_is_refused(small, tmp_path):
    mine = tmp_path / "out" / "inspect"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("a user's notes")
    with pytest.raises(PipelineError, match="inspect exists but this pipeline did not write it"):
        run_pipeline(load_pipeline(small))
    assert (mine / "notes.txt").read_text() == "a user's notes" and not (tmp_path / "out" / "images").exists()
    code = main(["pipeline", "run", str(small), "--from", "inspekt"])
    assert code == 2


def test_a_step_moved_onto_a_folder_it_did_not_write_is_refused_even_with_redo(small, tmp_path):
    """--redo starts a step over by removing what it wrote: never a folder its record does not list (here: the
    step's `dir` changed to a user's folder, which the old code emptied)."""
    run_pipeline(load_pipeline(small), only="other")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's notes")
    with pytest.raises(PipelineError, match="foreign exists but this pipeline did not write it"):
        run_pipeline(load_pipeline(small, [f"steps.other.dir={foreign}"]), redo=["other"], only="other")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # a new folder is fine; moving back to the first folder starts over there and leaves the other one alone
    run_pipeline(load_pipeline(small, [f"steps.other.dir={tmp_path / 'new'}"]), redo=["other"], only="other")
    run_pipeline(load_pipeline(small), redo=["other"], only="other")
    assert (tmp_path / "new" / "dataset.json").is_file() and (tmp_path / "out" / "other" / "dataset.json").is_file()


def test_a_recipe_says_how_any_command_runs_its_outputs_inputs_and_whether_it_resumes(small, tmp_path):
    """A step of a command the runner has no defaults for: its declared outputs are what is checked and handed on,
    a declared input's change makes it stale, and `resumes` decides whether a re-run after a kill keeps its work."""
    notes = tmp_path / "notes.txt"
    notes.write_text("read by the step")
    declared = '    resumes: RESUMES\n    distributed: true\n    outputs: ["{dir}/dataset.json"]\n'
    declared += f"    inputs: [{notes}]\n"
    text = small.read_text().replace(
        "  other:\n    run: data synthetic\n", "  other:\n    run: data synthetic\n" + declared
    )
    for resumes, kept in ((True, True), (False, False)):
        recipe = tmp_path / f"resumes-{resumes}.yaml"
        recipe.write_text(
            text.replace("RESUMES", str(resumes).lower()).replace(str(tmp_path / "out"), str(recipe) + ".out")
        )
        pipeline = load_pipeline(recipe)
        step = pipeline.step("other")
        assert step.outputs == (step.dir / "dataset.json",) and notes in step.inputs and step.kind.resumes is resumes
        assert step.torchrun_line().startswith("torchrun --nproc-per-node=8 -m vfmvae data synthetic")
        run_pipeline(pipeline)
        notes.write_text("changed")
        assert pipeline_status(load_pipeline(recipe))["other"].reason == f"input {notes} changed"
        notes.write_text("read by the step")
        # as a kill inside the step leaves it: the record says running, the folder holds partial work
        record = json.loads((pipeline.out / ".pipeline" / "other.json").read_text())
        (pipeline.out / ".pipeline" / "other.json").write_text(json.dumps({**record, "state": "running"}))
        (step.dir / "partial.txt").write_text("work of the killed run")
        status = pipeline_status(load_pipeline(recipe))["other"]
        assert status.state == "pending" and status.reason.endswith("continues it)" if resumes else "starts it over)")
        run_pipeline(load_pipeline(recipe))
        assert (step.dir / "partial.txt").exists() is kept and (step.dir / "dataset.json").is_file()
        assert pipeline_status(load_pipeline(recipe))["other"].state == "done"


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '{"steps": 3}', '{"steps": [1, {"title": "x"}, {"name": "s", "result": {"json": 2}}]}'],
)
def test_a_damaged_pipeline_json_does_not_stop_the_report(text, tmp_path, caplog):
    """pipeline.json is only a summary (the step records are the truth): a damaged one leaves out the result table
    and the commands, with a warning naming it, and the rest of the page is built."""
    from vfmvae.report import build_report

    (tmp_path / "recon-a.json").write_text(json.dumps({"psnr": 20.0}))
    (tmp_path / "pipeline.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        page = build_report(tmp_path).read_text()
    assert "psnr" in page and "pipeline.json" in caplog.text
    step = {"name": "info", "title": "ok", "command": "vfmvae info", "torchrun": None, "status": "done"}
    (tmp_path / "pipeline.json").write_text(json.dumps({"recipe": "r.yaml", "steps": [step, "damaged"]}))
    page = build_report(tmp_path).read_text()
    assert "<h2>Results</h2>" in page and "vfmvae info" in page
