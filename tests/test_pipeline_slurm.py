"""`vfmvae pipeline run --launcher slurm`: one submitit job per step, after its upstream steps' jobs; run here with
submitit's local executor (each job a process of its own that runs its step in-process and writes its record)."""

from pathlib import Path

import pytest

from vfmvae.pipeline import load_pipeline
from vfmvae.pipeline.launchers import SlurmLauncher, job_parameters
from vfmvae.pipeline.status import pipeline_status

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
out: {out}
resources: {{nodes: 2, gpus_per_node: 4, partition: gpu, time_min: 90, slurm: {{account: vision}}}}
steps:
  images:
    run: data synthetic
    options: {{out: "{{dir}}", num: 4, classes: 2, size: 16}}
  inspect:
    run: data inspect
    options: {{data: "{{steps.images}}/images", resolution: 16, json: "{{dir}}/report.json"}}
    resources: {{time_min: 10}}
"""


def test_job_parameters_carry_the_resources_and_the_dependencies():
    pipeline = load_pipeline(
        ROOT / "configs" / "pipeline" / "paper-reg.yaml",
        ["resources.nodes=4", "resources.partition=gpu", "resources.slurm={qos: high}"],
    )
    train = job_parameters(pipeline.step("diffusion-80ep"), ["1001", "1002"])
    assert train == {
        "name": "vfmvae-diffusion-80ep",
        "nodes": 4,
        "tasks_per_node": 8,  # one task per GPU: torch.distributed's environment is set from Slurm's
        "gpus_per_node": 8,
        "timeout_min": 4320,
        "slurm_partition": "gpu",
        "slurm_additional_parameters": {"qos": "high", "dependency": "afterok:1001:1002"},
    }
    evaluate = job_parameters(pipeline.step("eval-gen-80ep-nocfg"))
    assert (evaluate["nodes"], evaluate["tasks_per_node"], evaluate["gpus_per_node"]) == (1, 1, 0)
    assert "dependency" not in evaluate["slurm_additional_parameters"]


def test_local_executor_runs_each_step_as_a_job(tmp_path, capsys):
    pytest.importorskip("submitit")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "out"))
    pipeline = load_pipeline(recipe)
    assert job_parameters(pipeline.step("inspect"))["timeout_min"] == 10  # a step's own resources
    jobs = SlurmLauncher(pipeline, str(recipe), [], cluster="local").submit(["images", "inspect"], set())
    assert [job.result()["state"] for job in jobs.values()] == ["done", "done"]
    assert {name: s.state for name, s in pipeline_status(pipeline).items()} == {"images": "done", "inspect": "done"}
    assert (tmp_path / "out" / "inspect" / "report.json").is_file()
    assert "logs in" in capsys.readouterr().out
