"""The `vfmvae` command: one parser, one module per command (named after it), each a thin call into the library."""

from __future__ import annotations

import argparse
import errno
import logging
import pickle
import sys
from collections.abc import Sequence

from vfmvae.cli import align as align_cmd
from vfmvae.cli import cache_latents as cache_latents_cmd
from vfmvae.cli import convert as convert_cmd
from vfmvae.cli import data as data_cmd
from vfmvae.cli import diffusion as diffusion_cmd
from vfmvae.cli import eval as eval_cmd
from vfmvae.cli import export as export_cmd
from vfmvae.cli import info as info_cmd
from vfmvae.cli import reconstruct as reconstruct_cmd
from vfmvae.cli import report as report_cmd
from vfmvae.cli import sample as sample_cmd
from vfmvae.cli import train as train_cmd
from vfmvae.cli import vfm as vfm_cmd
from vfmvae.cli.parser import CLIParser
from vfmvae.config import ConfigError
from vfmvae.distributed import parse_device

__all__ = ["main", "build_parser"]

# Order of appearance in `vfmvae --help`. Only commands that work are listed.
COMMAND_GROUPS = (
    data_cmd,
    vfm_cmd,
    convert_cmd,
    reconstruct_cmd,
    train_cmd,
    cache_latents_cmd,
    diffusion_cmd,
    sample_cmd,
    eval_cmd,
    align_cmd,
    report_cmd,
    export_cmd,
    info_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    from vfmvae import __version__

    parser = CLIParser(
        prog="vfmvae",
        description="VFM-VAE tokenizers and latent diffusion: data, training, sampling, evaluation, analysis.",
        epilog="Run `vfmvae COMMAND --help` for each command's options. Under torchrun: "
        "`torchrun --nproc-per-node=N -m vfmvae COMMAND ...`.",
    )
    parser.add_argument("--version", action="version", version=f"vfmvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", False)  # `-v` may come before or after the command, or not at all
    configure_logging(args.verbose)
    try:
        if getattr(args, "device", None):
            parse_device(args.device)  # before any expensive work: `--device cuda` on a CPU machine is one line
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"vfmvae {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 2
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
