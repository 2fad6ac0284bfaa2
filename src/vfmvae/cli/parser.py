"""The argument parser every `vfmvae` command uses: defaults in the help, no abbreviations, suggestions for typos.

* Help: each option's help ends with its default (or "required"), unless the text already says what the default is.
* `allow_abbrev=False` everywhere: `--num-sample 4` is an error, never a silent prefix match.
* An unknown option is reported by the subcommand that received it, with its usage and the closest option
  ("did you mean --num-samples?"), via difflib (argparse's own `suggest_on_error` exists only from Python 3.14).
* `-v/--verbose` is accepted before the command and after any subcommand.
* Renamed options keep their old spelling for one release: hidden from the help, and using it prints one line that
  names the new spelling (`add_option(..., deprecated=("--model",))`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CLIParser", "CLIHelpFormatter", "DeprecatedFlag", "add_option", "VERBOSE_HELP"]

VERBOSE_HELP = (
    "debug logging from vfmvae (third-party libraries such as PIL stay at INFO) and full tracebacks "
    "instead of one-line errors; accepted before or after the command (default: off)"
)


class CLIHelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (like `ArgumentDefaultsHelpFormatter`, but never "default: None") and hides
    deprecated spellings."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text is argparse.SUPPRESS or "default" in text.lower() or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default == []:  # a repeatable option (`--set`)
            return f"{text} (default: none)"
        if action.default is None or action.default is argparse.SUPPRESS:
            return text  # the help text must say what happens without it (tests/test_cli_conventions.py checks)
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "deprecated_strings", frozenset())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = argparse.Action(
            [s for s in action.option_strings if s not in hidden],
            action.dest,
            nargs=action.nargs,
            choices=action.choices,
            metavar=action.metavar,
            help=action.help,
        )
        return super()._format_action_invocation(shown)


class CLIParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the conventions above; `add_subparsers` makes more of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", CLIHelpFormatter)
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand's parser must not reset a `-v` given before the command
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        if args is not None and not self._has_subcommands():
            # before argparse's own checks: a misspelled required option is reported as misspelled, not missing
            unknown = [a for a in _options_of(args) if a.split("=", 1)[0] not in self._option_string_actions]
            if unknown:
                self.error(self.unrecognized_message(unknown))
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not self._has_subcommands():
            # the innermost (sub)command reports it, with its own usage, not the top-level one
            self.error(self.unrecognized_message(extras))
        return namespace, extras

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized_message(extras))
        return namespace

    def error(self, message: str):  # type: ignore[override]
        for action in self._actions:  # "required: --num-samples/--num" -> "required: --num-samples"
            hidden = getattr(action, "deprecated_strings", frozenset())
            if hidden:
                shown = "/".join(s for s in action.option_strings if s not in hidden)
                message = message.replace("/".join(action.option_strings), shown)
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if match:
            close = difflib.get_close_matches(match.group(1), re.findall(r"'([^']*)'", match.group(2)), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)

    def unrecognized_message(self, extras: list[str]) -> str:
        message = f"unrecognized arguments: {' '.join(extras)}"
        for word in extras:
            if word.startswith("--"):
                suggestion = self.closest_option(word.split("=", 1)[0])
                if suggestion:
                    return f"{message} (did you mean {suggestion}?)"
        return message

    def closest_option(self, word: str) -> str | None:
        """The option this parser knows that `word` most likely meant (old spellings map to their new name)."""
        canonical: dict[str, str] = {}
        for action in self._actions:
            if action.help is argparse.SUPPRESS or not action.option_strings:
                continue
            hidden = getattr(action, "deprecated_strings", frozenset())
            name = next((s for s in action.option_strings if s.startswith("--") and s not in hidden), None)
            for string in action.option_strings:
                if string.startswith("--") and name:
                    canonical[string] = name
        close = difflib.get_close_matches(word, list(canonical), n=1, cutoff=0.6)
        return canonical[close[0]] if close else None

    def _has_subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self._actions)


def _options_of(args: Sequence[str]) -> list[str]:
    """The `--long` option words of a command line, up to a bare `--`."""
    words = []
    for word in args:
        if word == "--":
            break
        if word.startswith("--"):
            words.append(word)
    return words


class _DeprecatedAliasStore(argparse._StoreAction):
    """A store action whose old option strings still work for one release, with a one-line note."""

    deprecated_strings: frozenset[str] = frozenset()

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated_strings:
            new = next(s for s in self.option_strings if s not in self.deprecated_strings)
            print(
                f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; write {new}",
                file=sys.stderr,
            )
        super().__call__(parser, namespace, values, option_string)


class DeprecatedFlag(argparse.Action):
    """A flag that no longer does anything (its behaviour became the default): accepted for one release, with a note.

    `parser.add_argument("--sample", action=DeprecatedFlag, note="sampling is the default")`"""

    def __init__(self, option_strings: list[str], dest: str, note: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.note = note

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; {self.note}",
            file=sys.stderr,
        )


def add_option(
    parser: argparse.ArgumentParser, *names: str, deprecated: Sequence[str] = (), **kwargs: Any
) -> argparse.Action:
    """`parser.add_argument(*names, **kwargs)`, also accepting the `deprecated` old spellings (hidden, with a note)."""
    if not deprecated:
        return parser.add_argument(*names, **kwargs)
    if kwargs.get("action", "store") != "store":
        raise TypeError("deprecated spellings are supported for options that take a value")
    kwargs["action"] = _DeprecatedAliasStore
    kwargs.setdefault("dest", names[0].lstrip("-").replace("-", "_"))
    action = parser.add_argument(*names, *deprecated, **kwargs)
    action.deprecated_strings = frozenset(deprecated)
    return action
