"""`vfmvae pipeline run | status`: a whole run (configs/pipeline/*.yaml) as one resumable command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run a whole recipe of steps (data to the paper's table), resumable, locally or on Slurm",
        description="A pipeline recipe (configs/pipeline/*.yaml: paper-reg, paper-lightningdit, released-weights, "
        "demo) names its steps, each an existing vfmvae command with its options. `run` runs every step that is not "
        "done, in order; a step whose settings or inputs changed is stale and runs again only when asked (--redo "
        "STEP, --from STEP); a killed run continues inside the interrupted step. `status` prints each step: done, "
        "stale (why) or pending. Records: OUT/.pipeline/; summary: OUT/pipeline.json; the report's first section "
        "is the result table beside the paper's figures.",
    )
    psub = p.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", required=True)
    r = psub.add_parser(
        "run",
        help="run the steps that are not done",
        description="Run every step that is not done, in order, each in this process (--launcher local), or submit "
        "one Slurm job per step, each after its upstream steps' jobs (--launcher slurm; resources from the "
        "recipe's `resources:`). Every step prints its command line, and for the steps that train, cache or sample "
        "the same under torchrun.",
    )
    _recipe_args(r)
    r.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="STEP",
        help="run this step again even if done or stale (repeatable); its downstream steps then need --from",
    )
    r.add_argument(
        "--from",
        dest="start",
        metavar="STEP",
        default=None,
        help="run this step and every step downstream of it again (default: none)",
    )
    r.add_argument(
        "--only",
        metavar="STEP",
        default=None,
        help="run just this step (its upstream steps must be done); e.g. under torchrun on several GPUs: "
        "torchrun --nproc-per-node=8 -m vfmvae pipeline run RECIPE --only diffusion (default: every step)",
    )
    r.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: in this process, one step after the other; slurm: one job per step via submitit",
    )
    r.set_defaults(func=run)

    s = psub.add_parser(
        "status",
        help="print each step: done, stale (why) or pending",
        description="Each step's state without running anything: done (its outputs exist and the settings and "
        "inputs they were made with are unchanged), stale (with the reason), or pending (not run yet, or "
        "interrupted). Then the result table so far.",
    )
    _recipe_args(s)
    s.add_argument(
        "--commands",
        action="store_true",
        help="also print each step's command line, and under torchrun for the steps that train, cache or sample",
    )
    s.set_defaults(func=status)


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="pipeline recipe (configs/pipeline/*.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable), e.g. --set vars.data=/data/imagenet "
        "--set steps.diffusion.set.run.total_images=1024000",
    )


def run(args: argparse.Namespace) -> int:
    from vfmvae.pipeline import load_pipeline
    from vfmvae.pipeline.runner import StepFailed, check_new_folders, check_runnable, requested_steps, run_pipeline
    from vfmvae.pipeline.status import pipeline_status
    from vfmvae.pipeline.table import results_text

    pipeline = load_pipeline(args.recipe, args.overrides)
    for name in [*args.redo, *filter(None, [args.start, args.only])]:
        pipeline.step(name)  # an unknown step name: one line, before anything runs
    if args.launcher == "slurm":
        from vfmvae.pipeline.launchers import SlurmLauncher

        statuses = pipeline_status(pipeline)
        requested = requested_steps(pipeline, args.redo, args.start)
        check_runnable(pipeline, statuses, requested)
        names = [s.name for s in pipeline.steps if statuses[s.name].state != "done" or s.name in requested]
        if args.only is not None:
            names = [args.only]
        check_new_folders(pipeline, {name: statuses[name] for name in names})  # before any job is submitted
        if not names:
            print("every step is done; nothing to submit")
            return 0
        SlurmLauncher(pipeline, str(args.recipe), list(args.overrides)).submit(names, requested)
        print(f"submitted {len(names)} job(s); follow them with: vfmvae pipeline status {args.recipe}")
        return 0
    try:
        run_pipeline(pipeline, redo=args.redo, start=args.start, only=args.only)
    except StepFailed as err:
        print(f"vfmvae pipeline: error: {err}", file=sys.stderr)
        return err.code
    table = results_text(pipeline.out)
    if table:
        print("\n" + table)
    return 0


def status(args: argparse.Namespace) -> int:
    from vfmvae.cli.common import print_table
    from vfmvae.pipeline import load_pipeline
    from vfmvae.pipeline.status import pipeline_status
    from vfmvae.pipeline.table import results_text

    pipeline = load_pipeline(args.recipe, args.overrides)
    statuses = pipeline_status(pipeline)
    rows = [("step", "status", "why", "time")]
    for step in pipeline.steps:
        state = statuses[step.name]
        seconds = (state.record or {}).get("seconds")
        rows.append((step.name, state.state, state.reason, f"{seconds:.1f} s" if seconds is not None else "-"))
    print_table(rows)
    if args.commands:
        for step in pipeline.steps:
            print(f"\n{step.name}: {step.title}\n  $ {step.command_line()}")
            if step.distributed:
                print(f"  at scale: {step.torchrun_line()}")
    table = results_text(pipeline.out)
    if table:
        print("\n" + table)
    return 0
