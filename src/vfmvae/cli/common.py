"""Helpers shared by the command modules: recipe + `--set` options, JSON output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vfmvae.config import load_config

T = TypeVar("T")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a zero batch or sample count is a mistake, not a no-op)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def bounded_int(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (a count or size far beyond any real use is a typo, and would
    exhaust memory or never finish instead of failing)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:,}, got {value:,}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}{what}, got {value:,}")
        return value

    return parse


def image_side(text: str) -> int:
    """argparse type: an image side in pixels, 1..MAX_IMAGE_SIDE."""
    from vfmvae.limits import MAX_IMAGE_SIDE

    return bounded_int(1, MAX_IMAGE_SIDE, " pixels")(text)


def add_recipe_args(
    parser: argparse.ArgumentParser,
    what: str,
    *,
    recipe: bool = True,
    required: bool = False,
    recipe_help: str | None = None,
    set_help: str = "override one recipe key, dotted for nested keys (repeatable), e.g. --set num=1024",
) -> None:
    """`--recipe FILE` (unless `recipe` is False) and the repeatable `--set KEY=VALUE` (dest `overrides`)."""
    if recipe:
        parser.add_argument(
            "--recipe",
            type=Path,
            required=required,
            help=recipe_help
            or f"YAML recipe for the {what} (keys as in the config dataclass; default: none, the dataclass defaults)",
        )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def resolve_config(cls: type[T], args: argparse.Namespace, flag_keys: dict[str, str]) -> T:
    """Recipe, then `--set`, then explicit flags (`flag_keys` maps argparse dest -> config key)."""
    overrides = list(args.overrides)
    for dest, key in flag_keys.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)}")
    return load_config(cls, args.recipe, overrides)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    from vfmvae.checkpoint.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns, the first row as the header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
