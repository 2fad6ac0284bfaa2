"""The pipeline recipe (configs/pipeline/*.yaml): a whole run as named steps, each an existing command.

    out: runs/demo                       # every step's folder lives under it, with the pipeline's records
    vars: {data: /data/imagenet}         # named values, {vars.data} in any step; --set vars.data=...
    resources: {nodes: 1, gpus_per_node: 8, partition: gpu, time_min: 4320}   # Slurm jobs, torchrun lines
    steps:
      tokenizer-stage0:
        title: the first tokenizer stage
        run: train tokenizer             # the command's words (program `vfmvae`, or `program: vfmvae.demo`)
        options: {recipe: configs/tokenizer/stage0.yaml}           # --recipe configs/tokenizer/stage0.yaml
        set: {data: {source: "{vars.data}"}, run: {dir: "{dir}"}}  # --set data.source=... --set run.dir=...
      cache-latents:
        run: cache-latents
        options: {tokenizer: "{steps.tokenizer-stage0}/export", data: "{vars.data}", out: "{dir}", flip: true}

Placeholders: `{out}`, `{dir}` (the step's folder, default `{out}/{name}`), `{name}`, `{vars.KEY}` and
`{steps.NAME}` (an earlier step's folder). A step depends on every step it names, plus `after` (`"*"`: every
earlier step). Options render as `--name value` (`true`: the bare flag; `false`/null: left out; a list: the option
repeated); `set` renders as `--set key=value` (nested mappings give dotted keys); `args` are positional.

A value that names an existing path outside `out` is an input of the step: its content (a file's sha256, a
folder's listing) is recorded, and a change makes the step stale. `inputs` adds more.

Any command of `vfmvae` (or a `vfmvae.X` module with `main` and `build_parser`) can be a step; the recipe says
what the runner needs to know about it, where vfmvae.pipeline.commands has no default for that command:

      vfm-pretrain:
        run: vfm pretrain
        options: {data: "{steps.data}/images", out: "{dir}"}
        outputs: ["{dir}/export"]        # what later steps read (default: the step's folder)
        inputs: [configs/vfm/toy.yaml]   # more external files it reads (paths named in options count already)
        resumes: true                    # re-run after a kill continues its work (default: starts over)
        distributed: false               # runs under torchrun at scale (default: train, cache, sample)
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vfmvae.config import ConfigError, config_from_dict, config_to_dict, load_config
from vfmvae.pipeline.commands import CommandKind, check_command_line, command_kind

__all__ = ["Resources", "ResultSpec", "StepSpec", "PipelineRecipe", "Step", "Pipeline", "load_pipeline"]

PLACEHOLDER = re.compile(r"\{(out|dir|name|steps\.[a-z0-9_-]+|vars\.[A-Za-z0-9_-]+)\}")
STEP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Resources:
    """What one step needs on a cluster (`--launcher slurm`) and its torchrun line."""

    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int = 4320  # the Slurm time limit of one job, in minutes
    slurm: dict[str, str] = field(default_factory=dict)  # more sbatch options, e.g. {account: X, qos: Y}

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"resources.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ResultSpec:
    """A step whose `--json` holds figures of the result table (`eval recon` or `eval gen`)."""

    json: str  # the file the step writes its results to
    label: str  # the row's name in the table
    paper: str | None = None  # key of vfmvae.pipeline.paper.PAPER: the paper's figures for this row


@dataclass(frozen=True)
class StepSpec:
    run: str  # the command's words after the program, e.g. "train tokenizer", "eval gen"
    title: str = ""
    program: str = "vfmvae"
    options: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    dir: str = "{out}/{name}"
    outputs: list[str] | None = None  # default: what the command leaves for the next steps (its run's export, ...)
    inputs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    distributed: bool | None = None  # runs under torchrun at scale; default: the command's (train, cache, sample)
    resumes: bool | None = None  # a re-run after a kill continues its work; default: the command's (commands.py)
    resources: dict[str, Any] = field(default_factory=dict)  # this step's changes to the recipe's resources
    full_scale: str = ""  # the same step at full scale, for the report (the demo's tiny steps)
    result: ResultSpec | None = None


@dataclass(frozen=True)
class PipelineRecipe:
    out: Path
    steps: dict[str, StepSpec]
    description: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class Step:
    """One step with every placeholder resolved."""

    name: str
    index: int
    spec: StepSpec
    kind: CommandKind
    settings: dict[str, Any]  # what defines the step's work: program, run, options, set (dotted keys), args
    argv: tuple[str, ...]
    dir: Path
    outputs: tuple[Path, ...]
    inputs: tuple[Path, ...]  # external paths whose content the step depends on
    deps: tuple[str, ...]
    distributed: bool
    resources: Resources
    result: ResultSpec | None  # with its placeholders resolved

    @property
    def title(self) -> str:
        return self.spec.title or self.name

    def command_line(self) -> str:
        """The command as a user types it."""
        prefix = "vfmvae" if self.spec.program == "vfmvae" else f"python -m {self.spec.program}"
        return f"{prefix} {shlex.join(self.argv)}"

    def torchrun_line(self) -> str | None:
        """The command under torchrun on the recipe's nodes and GPUs (None for a step that runs as one process)."""
        if not self.distributed:
            return None
        res = self.resources
        launch = f"torchrun --nproc-per-node={res.gpus_per_node}"
        if res.nodes > 1:
            launch = (
                f"torchrun --nnodes={res.nodes} --nproc-per-node={res.gpus_per_node} --rdzv-backend=c10d "
                f"--rdzv-endpoint=$MASTER_HOST:29500 --rdzv-id={self.name}"
            )
        return f"{launch} -m {self.spec.program} {shlex.join(self.argv)}"


@dataclass(frozen=True)
class Pipeline:
    recipe: PipelineRecipe
    source: str  # the recipe file (+ overrides), for messages
    steps: tuple[Step, ...]

    @property
    def out(self) -> Path:
        return self.recipe.out

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise ConfigError(f"{self.source}: no step named {name!r} (steps: {', '.join(s.name for s in self.steps)})")

    def descendants(self, name: str) -> list[str]:
        """Every step that depends on `name`, directly or not, in order."""
        found = {name}
        for step in self.steps:
            if found & set(step.deps):
                found.add(step.name)
        return [s.name for s in self.steps if s.name in found and s.name != name]


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """Read a pipeline recipe, apply `--set` overrides, resolve every step and check each command line."""
    recipe = load_config(PipelineRecipe, path, list(overrides))
    source = str(path) + (" + --set overrides" if overrides else "")
    if not recipe.steps:
        raise ConfigError(f"{source}: steps: the recipe has no steps")
    out = str(recipe.out)
    variables = {
        key: _resolve(value, {"out": out}, f"{source}: vars.{key}", set()) for key, value in recipe.vars.items()
    }
    steps: list[Step] = []
    for index, (name, spec) in enumerate(recipe.steps.items()):
        steps.append(_resolve_step(recipe, source, index, name, spec, variables, steps))
    return Pipeline(recipe=recipe, source=source, steps=tuple(steps))


def _resolve_step(
    recipe: PipelineRecipe,
    source: str,
    index: int,
    name: str,
    spec: StepSpec,
    variables: dict[str, Any],
    earlier: list[Step],
) -> Step:
    where = f"{source}: steps.{name}"
    if not STEP_NAME.match(name):
        raise ConfigError(f"{where}: a step name is lower-case letters, digits, - and _")
    folders = {step.name: str(step.dir) for step in earlier}
    context = {"out": str(recipe.out), "name": name, "vars": variables, "steps": folders}
    refs: set[str] = set()
    folder = Path(_resolve(spec.dir, context, f"{where}.dir", refs))
    context["dir"] = str(folder)
    options = _resolve(spec.options, context, f"{where}.options", refs)
    overrides = _flatten(_resolve(spec.set, context, f"{where}.set", refs))
    args = [_scalar(v) for v in _resolve(spec.args, context, f"{where}.args", refs)]
    kind = command_kind(spec.program, spec.run)
    if spec.resumes is not None:
        kind = replace(kind, resumes=spec.resumes)
    outputs_spec = (
        spec.outputs if spec.outputs is not None else [str(folder / o) if o else str(folder) for o in kind.outputs]
    )
    outputs = tuple(Path(p) for p in _resolve(outputs_spec, context, f"{where}.outputs", refs))
    declared_inputs = [Path(p) for p in _resolve(spec.inputs, context, f"{where}.inputs", refs)]
    after = set(refs)
    for other in spec.after:
        if other == "*":
            after |= set(folders)
        elif other not in folders:
            raise ConfigError(
                f"{where}.after: {other!r} names no earlier step (earlier: {', '.join(folders) or 'none'})"
            )
        else:
            after.add(other)
    argv = [*spec.run.split(), *_render_options(options), *_render_set(overrides), *args]
    check_command_line(spec.program, argv, where)
    values = [*_strings(options), *_strings(overrides), *args]
    inputs = sorted({*declared_inputs, *(Path(v) for v in values if _external_path(v, recipe.out))}, key=str)
    resources = config_from_dict(
        Resources, {**config_to_dict(recipe.resources), **spec.resources}, source=f"{where}.resources"
    )
    result = None
    if spec.result is not None:
        result = ResultSpec(**_resolve(asdict(spec.result), context, f"{where}.result", refs))
    return Step(
        name=name,
        index=index,
        spec=spec,
        kind=kind,
        settings={
            "program": spec.program,
            "run": spec.run,
            "options": config_to_dict(options),
            "set": config_to_dict(overrides),
            "args": args,
        },
        argv=tuple(argv),
        dir=folder,
        outputs=outputs,
        inputs=tuple(inputs),
        deps=tuple(s for s in folders if s in after),
        distributed=kind.distributed if spec.distributed is None else spec.distributed,
        resources=resources,
        result=result,
    )


def _resolve(value: Any, context: dict[str, Any], where: str, refs: set[str]) -> Any:
    """`value` with its placeholders replaced (recursively); names of referenced steps are added to `refs`."""
    if isinstance(value, dict):
        return {key: _resolve(item, context, f"{where}.{key}", refs) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(item, context, f"{where}[{i}]", refs) for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(key: str) -> Any:
        head, _, rest = key.partition(".")
        if head in ("steps", "vars"):
            table = context.get(head)
            if table is None or rest not in table:
                what = "an earlier step" if head == "steps" else "a key of vars"
                known = ", ".join(table) if table else "none"
                raise ConfigError(f"{where}: {{{key}}} names no {what} (known: {known})")
            if head == "steps":
                refs.add(rest)
            return table[rest]
        if head not in context:
            raise ConfigError(f"{where}: {{{key}}} cannot be used here")
        return context[head]

    whole = PLACEHOLDER.fullmatch(value)
    if whole:  # one placeholder alone keeps its value's type ({vars.flag} stays a bool)
        return lookup(whole.group(1))
    return PLACEHOLDER.sub(lambda m: str(_scalar(lookup(m.group(1)))), value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalar(value: Any) -> str:
    """A value as one command-line word (YAML for lists and mappings, as `--set` parses them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(config_to_dict(value))  # JSON is YAML: `--set` reads it back as the same list
    return str(value)


def _render_options(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                argv += [flag, _scalar(item)]
        else:
            argv += [flag, _scalar(value)]
    return argv


def _render_set(overrides: dict[str, Any]) -> list[str]:
    return [word for key, value in overrides.items() for word in ("--set", f"{key}={_scalar(value)}")]


def _strings(tree: Any) -> list[str]:
    if isinstance(tree, dict):
        return [s for value in tree.values() for s in _strings(value)]
    if isinstance(tree, list):
        return [s for value in tree for s in _strings(value)]
    return [tree] if isinstance(tree, str) else []


def _external_path(value: str, out: Path) -> bool:
    """An existing file or folder outside the pipeline's own folder (whose contents the steps track themselves)."""
    if not value or "\n" in value or len(value) > 4096 or ("/" not in value and "." not in value):
        return False
    try:
        path = Path(value)
        if not path.exists():
            return False
        return not path.resolve().is_relative_to(Path(out).resolve())
    except (OSError, ValueError):
        return False


def recipe_summary(pipeline: Pipeline) -> dict[str, Any]:
    """The recipe as resolved (for pipeline.json)."""
    return {"source": pipeline.source, "out": str(pipeline.out), "resources": asdict(pipeline.recipe.resources)}
