"""What the pipeline knows about each command it runs: how to call it in-process, whether it resumes, whether it
runs under torchrun at scale, what it leaves behind, and which changed settings it continues with.

A step names its command by its words (`train tokenizer`, `eval gen`) and its program: `vfmvae` (the CLI, called
as `vfmvae.cli.main(argv)`), or another module of this package with a `main(argv) -> int` and a
`build_parser()` (the demo's helpers, `python -m vfmvae.demo ...`). Any command works in a step; the table below
only refines the defaults for the commands whose behaviour matters to a resumable pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vfmvae.config import ConfigError
from vfmvae.training.run_folder import RESUMABLE_CHANGES

__all__ = ["CommandKind", "command_kind", "entry_point", "check_command_line"]


@dataclass(frozen=True)
class CommandKind:
    # re-running it after a kill continues the interrupted work (its own checkpoints or finished items) instead of
    # starting over; a command that does not resume has its outputs cleared before it runs again
    resumes: bool = False
    distributed: bool = False  # runs under torchrun at scale (one process per GPU)
    outputs: tuple[str, ...] = ("",)  # what downstream steps read, relative to the step's folder ("" = the folder)
    # settings (keys as in the step's settings: "set.run.total_images", "options.num-samples") that the command
    # continues with when they change; any other change starts the step over
    continuable: frozenset[str] = frozenset()


_TRAINING = CommandKind(
    resumes=True,
    distributed=True,
    outputs=("export",),
    continuable=frozenset(f"set.{key}" for key in RESUMABLE_CHANGES),
)

COMMANDS: dict[str, CommandKind] = {
    "train tokenizer": _TRAINING,
    "train diffusion": _TRAINING,
    # cache.json's settings fix everything but the workers and the device (vfmvae.latents.settings)
    "cache-latents": CommandKind(
        resumes=True, distributed=True, continuable=frozenset({"options.workers", "options.device"})
    ),
    # settings.json fixes everything but the count (only `num` may change) and the batch size (images do not depend
    # on it)
    "sample": CommandKind(
        resumes=True,
        distributed=True,
        continuable=frozenset({"options.num-samples", "options.batch-size", "options.device"}),
    ),
}


def command_kind(program: str, words: str) -> CommandKind:
    return COMMANDS.get(words, CommandKind()) if program == "vfmvae" else CommandKind()


def _module(program: str):
    if program == "vfmvae":
        return importlib.import_module("vfmvae.cli")
    if not program.startswith("vfmvae."):
        raise ConfigError(f"program {program!r}: a step runs vfmvae or a module of the vfmvae package (vfmvae.X)")
    try:
        module = importlib.import_module(program)
    except ImportError as err:
        raise ConfigError(f"program {program!r}: cannot import it ({err})") from None
    if not callable(getattr(module, "main", None)) or not callable(getattr(module, "build_parser", None)):
        raise ConfigError(f"program {program!r} has no main(argv) and build_parser(); it cannot run as a step")
    return module


def entry_point(program: str) -> Callable[[Sequence[str]], int]:
    """The function that runs `program ARGV` in this process and returns its exit code."""
    return _module(program).main


def check_command_line(program: str, argv: Sequence[str], where: str) -> argparse.Namespace:
    """Parse `argv` with the program's own parser, before anything runs: a bad option is one line naming the step."""
    parser = _module(program).build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(list(argv))
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else "invalid command line"
        raise ConfigError(f"{where}: {message}") from None
