"""`vfmvae pipeline`: a whole run (data or released weights -> the paper's table) as named, resumable steps.

`recipe.py` reads a recipe (configs/pipeline/*.yaml) into resolved steps, `commands.py` knows how each command
runs and resumes, `status.py` says which steps are done, stale or pending, `runner.py` runs them in this process,
`launchers.py` submits them to Slurm, `table.py` builds the result table beside the paper's figures (`paper.py`).
"""

from vfmvae.pipeline.recipe import Pipeline, PipelineRecipe, Step, StepSpec, load_pipeline

__all__ = ["Pipeline", "PipelineRecipe", "Step", "StepSpec", "load_pipeline"]
