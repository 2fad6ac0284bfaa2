"""The `vfmvae` command: one parser, one module per command (named after it), each a thin call into the library."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import pickle
import signal
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# Command modules in order of appearance in `vfmvae --help` (only commands that work are listed). They are
# imported when the parser is built, inside `main`, so that importing this module costs nothing: a Ctrl-C while
# torch loads is then caught like any other.
COMMAND_MODULES = (
    "pipeline",
    "data",
    "vfm",
    "convert",
    "reconstruct",
    "train",
    "cache_latents",
    "diffusion",
    "sample",
    "eval",
    "align",
    "report",
    "export",
    "info",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from vfmvae import __version__
    from vfmvae.cli.parser import CLIParser

    parser = CLIParser(
        prog="vfmvae",
        description="VFM-VAE tokenizers and latent diffusion: data, training, sampling, evaluation, analysis.",
        epilog="Run `vfmvae COMMAND --help` for each command's options. Under torchrun: "
        "`torchrun --nproc-per-node=N -m vfmvae COMMAND ...`.",
    )
    parser.add_argument("--version", action="version", version=f"vfmvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"vfmvae.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `vfmvae` command. Every expected failure is one line on stderr and exit code 2, including a Ctrl-C at any
    moment: while torch is still loading, during the command, or pressed again while the first one is handled."""
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        args.verbose = getattr(args, "verbose", False)  # `-v` may come before or after the command, or not at all
        configure_logging(args.verbose)
        return _run(args)
    except KeyboardInterrupt:
        # Blocked while the message is printed; the console command (argv None) then exits at once on the next
        # Ctrl-C (interpreter shutdown, data-loader workers) instead of printing a traceback from wherever it lands.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            if argv is None:
                signal.signal(signal.SIGINT, _exit_now)
            what = f"vfmvae {command}" if command else "vfmvae"
            print(f"{what}: interrupted; re-run the same command to resume", file=sys.stderr)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return 2


def _exit_now(signum: int, frame: object) -> None:
    os._exit(2)


def _run(args: argparse.Namespace) -> int:
    from vfmvae.config import ConfigError
    from vfmvae.distributed import parse_device
    from vfmvae.training.run import TrainingStopped

    try:
        if getattr(args, "device", None):
            parse_device(args.device)  # before any expensive work: `--device cuda` on a CPU machine is one line
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except (
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        KeyError,
        ValueError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        pickle.UnpicklingError,
        TrainingStopped,
    ) as err:
        # Expected user errors: one clear line, no traceback (use -v for one).
        if args.verbose:
            raise
        print(f"vfmvae {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if args.verbose or err.errno not in USER_OS_ERRORS:
            raise
        print(f"vfmvae {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def configure_logging(verbose: bool) -> None:
    """INFO for everything; with -v, DEBUG for vfmvae only (PIL, urllib3, ... at DEBUG would flood the terminal)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("vfmvae").setLevel(logging.DEBUG if verbose else logging.NOTSET)


# OS errors that a user fixes (a path, a disk, a permission), reported in one line instead of a traceback.
USER_OS_ERRORS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOSPC,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EDQUOT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
    }
)


ONE_LINE_LIMIT = 1200  # a config's valid-key list fits; a loader's dump of thousands of keys does not


def one_line(err: BaseException) -> str:
    """The error's message on one line. Past ONE_LINE_LIMIT characters (a loader's key dump is not a message) the
    middle is cut, so that both what went wrong (the start) and the end of a list of choices stay readable."""
    if isinstance(err, pickle.UnpicklingError):
        return (
            "refused to unpickle: the file holds pickled Python objects beyond plain tensors, which vfmvae never "
            "executes; pass a safetensors file or a plain tensor state dict"
        )
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    if len(text) <= ONE_LINE_LIMIT:
        return text
    head, tail = ONE_LINE_LIMIT * 2 // 3, ONE_LINE_LIMIT // 3 - 5
    return f"{text[:head]} ... {text[-tail:]}"
