"""Conventions every `vfmvae` command follows: defaults in every help, no
abbreviations, typo suggestions with the subcommand's usage, `-v` after the command without third-party debug lines,
one option naming scheme with deprecated spellings, modules named after commands, and the README's commands parse."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vfmvae.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _parsers(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """(command path, parser) for the top level and every (nested) subcommand."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help is argparse.SUPPRESS or not action.option_strings:
            continue
        yield action


def _rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_every_option_of_every_subcommand_shows_its_default():
    missing, count = [], 0
    for path, parser in _parsers():
        assert parser.allow_abbrev is False, f"vfmvae {' '.join(path)} allows abbreviations"
        parser.format_help()  # renders (a stray % in a help text would raise here)
        for action in _options(parser):
            count += 1
            text = _rendered_help(parser, action)
            if not text or ("default" not in text.lower() and "(required)" not in text):
                missing.append(f"vfmvae {' '.join(path)} {action.option_strings[0]}: {text!r}")
    assert count > 100 and not missing, "\n".join(missing)


def test_defaults_and_units_are_visible_in_the_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["align", "metric", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "nearest neighbours per row (default: 10)" in out and "(default: official)" in out
    helps = {(p, a.option_strings[0]): _rendered_help(parser, a) for p, parser in _parsers() for a in _options(parser)}
    assert "pixels" in helps[(("data", "synthetic"), "--size")]
    align_size = helps[(("align", "transforms"), "--size")]
    assert "pixels" in align_size and "(default: 256)" in align_size
    assert "(default: off)" in helps[(("vfm", "list"), "--all")]


@pytest.mark.parametrize(
    "path, word",
    [
        (("sample",), "PER PROCESS"),
        (("cache-latents",), "PER PROCESS"),
        (("reconstruct",), "one process"),
        (("eval", "gen"), "one process"),
        (("eval", "recon"), "one process"),
        (("eval", "ref-stats"), "one process"),
    ],
)
def test_every_batch_size_says_per_process_or_global(path, word):
    parser = dict(_parsers())[path]
    (action,) = [a for a in _options(parser) if a.option_strings[0] == "--batch-size"]
    assert word in _rendered_help(parser, action)


def test_every_batch_size_option_is_covered_above():
    with_batch = {p for p, parser in _parsers() if any(a.dest == "batch_size" for a in _options(parser))}
    assert with_batch == {
        ("sample",),
        ("cache-latents",),
        ("reconstruct",),
        ("eval", "gen"),
        ("eval", "recon"),
        ("eval", "ref-stats"),
    }
    train = dict(_parsers())
    for what in ("tokenizer", "diffusion"):  # training batch sizes are recipe keys: the help says which is global
        epilog = train[("train", what)].epilog
        assert "run.batch_size is the GLOBAL batch" in epilog and "run.micro_batch is the PER-PROCESS" in epilog


@pytest.mark.parametrize(
    "argv, usage, suggestion",
    [
        (["sample", "--diffusion", "d", "--num-sampels", "4", "--out", "o"], "usage: vfmvae sample", "--num-samples"),
        (["sample", "--num-sample", "4"], "usage: vfmvae sample", "--num-samples"),  # required options missing too
        (["align", "metric", "--a", "x", "--b", "y", "--top-k", "5"], "usage: vfmvae align metric", "--topk"),
        (["eval", "recon", "--tokeniser", "t", "--data", "d"], "usage: vfmvae eval recon", "--tokenizer"),
        (["reconstruct", "--outptu", "o"], "usage: vfmvae reconstruct", "--out"),  # typo of the old --output
        (["data", "synthetic", "--out=x", "--seeds=3"], "usage: vfmvae data synthetic", "--seed"),
    ],
)
def test_misspelled_option_shows_the_subcommand_usage_and_a_suggestion(argv, usage, suggestion, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"(did you mean {suggestion}?)" in err and "unrecognized arguments" in err


def test_misspelled_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sampel", "--num-samples", "4"])
    assert exc.value.code == 2 and "did you mean 'sample'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["data", "synthetic", "--ou", "OUT", "--num", "2", "--size", "8"], "--ou"),  # prefix of --out
        (["sample", "--diffusion", "d", "--num-sample", "4", "--out", "o"], "--num-sample"),  # prefix of --num-samples
        (["reconstruct", "--tok", "t", "--data", "d", "--out", "o"], "--tok"),  # prefix of --tokenizer
    ],
)
def test_no_silent_abbreviations(argv, prefix, capsys, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]  # (old code wrote the set there)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and f"unrecognized arguments: {prefix}" in capsys.readouterr().err


def test_verbose_is_accepted_before_and_after_the_subcommand(capsys):
    argv = ["data", "inspect", "--data", "/no/such/dir"]
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err  # one line without -v
    for with_verbose in (["-v", *argv], [*argv, "-v"], [*argv, "--verbose"], ["data", "-v", *argv[1:]]):
        args = build_parser().parse_args(with_verbose)
        assert args.verbose is True, with_verbose
        with pytest.raises(Exception, match="path does not exist"):  # -v: the exception itself, for a traceback
            main(with_verbose)
    assert getattr(build_parser().parse_args(argv), "verbose", False) is False


@pytest.mark.slow  # a fresh interpreter imports torch: ~30 s on a loaded 2-core machine
def test_verbose_does_not_flood_the_terminal_with_pil_debug_lines(tmp_path):
    from PIL import Image

    for i in range(2):
        (tmp_path / "images" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (i * 100, 0, 0)).save(tmp_path / "images" / "a" / f"{i}.png")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vfmvae",
            "data",
            "inspect",
            "--data",
            str(tmp_path / "images"),
            "--resolution",
            "16",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 images" in proc.stdout
    assert "PIL" not in proc.stderr and "STREAM" not in proc.stderr, proc.stderr


def test_verbose_sets_debug_for_vfmvae_only():
    import logging

    from vfmvae.cli import configure_logging

    try:
        configure_logging(True)
        assert logging.getLogger("vfmvae.data").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("PIL.PngImagePlugin").getEffectiveLevel() > logging.DEBUG
        configure_logging(False)
        assert logging.getLogger("vfmvae").level == logging.NOTSET
    finally:
        logging.getLogger("vfmvae").setLevel(logging.NOTSET)


DEPRECATED = [
    (["reconstruct", "--model", "M", "--data", "D", "--out", "O"], "--model", "--tokenizer", "tokenizer", "M"),
    (["reconstruct", "--tokenizer", "M", "--input", "D", "--out", "O"], "--input", "--data", "data", "D"),
    (["reconstruct", "--tokenizer", "M", "--data", "D", "--output", "O"], "--output", "--out", "out", "O"),
    (["align", "report", "--config", "C.yaml"], "--config", "--recipe", "recipe", "C.yaml"),
    (["align", "transforms", "--images", "I", "--out", "O"], "--images", "--data", "data", "I"),
    (["align", "extract", "--source", "vfm:x", "--images", "I", "--out", "O"], "--images", "--data", "data", "I"),
    (["eval", "ref-stats", "--images", "I", "--out", "O", "--inception", "W"], "--images", "--data", "data", "I"),
    (["sample", "--diffusion", "D", "--num", "3", "--out", "O"], "--num", "--num-samples", "num", 3),
]


@pytest.mark.parametrize("argv, old, new, dest, value", DEPRECATED)
def test_old_spellings_work_with_a_one_line_note_and_are_hidden(argv, old, new, dest, value, capsys):
    args = build_parser().parse_args(argv)
    value = Path(value) if isinstance(value, str) else value
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{old} is deprecated" in err and f"write {new}" in err
    new_argv = [new if a == old else a for a in argv]
    assert getattr(build_parser().parse_args(new_argv), dest) == value
    assert capsys.readouterr().err == ""  # the new spelling: no note
    parser = dict(_parsers())[tuple(argv[:2]) if argv[0] in ("align", "eval") else (argv[0],)]
    assert re.search(rf"{re.escape(old)}(?![\w-])", parser.format_help()) is None
    assert new in parser.format_help()


def test_a_flag_that_became_the_default_is_accepted_with_a_note(capsys):
    args = build_parser().parse_args(["reconstruct", "--tokenizer", "T", "--data", "D", "--out", "O", "--sample"])
    assert args.mode is False and not hasattr(args, "sample")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sample is deprecated" in err and "posterior sample is the default" in err
    assert "--sample" not in dict(_parsers())[("reconstruct",)].format_help()


def test_old_spelling_of_a_required_option_is_not_named_in_the_missing_message(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--diffusion", "d", "--out", "o"])
    err = capsys.readouterr().err
    assert "required: --num-samples" in err and "--num-samples/--num" not in err


def test_cli_modules_are_named_after_their_commands():
    for name in build_parser()._subparsers._group_actions[0].choices:
        module = importlib.import_module(f"vfmvae.cli.{name.replace('-', '_')}")
        parser = argparse.ArgumentParser()
        module.register(parser.add_subparsers())
        assert name in parser._subparsers._group_actions[0].choices, f"vfmvae/cli/{module.__name__} registers {name}?"
    for old in ("tokenizer", "latents", "evaluate"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"vfmvae.cli.{old}")


# --- every command the README and the docs show parses as written (with the current option names) -------


def _shown_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for kind, block in re.findall(r"```(bash|console)\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if kind == "console" and not line.startswith("$ "):
                    continue  # output, not a command
                words = shlex.split(line.removeprefix("$ "), comments=True)
                if "vfmvae" in words and (words[0] == "vfmvae" or words[words.index("vfmvae") - 1] == "-m"):
                    commands.append((doc.name, words[words.index("vfmvae") + 1 :]))
    for recipe in sorted((ROOT / "configs").rglob("*.yaml")):  # the commands in the recipes' header comments
        text = re.sub(r"\\\n#\s*", " ", recipe.read_text())
        for line in re.findall(r"^#\s+(vfmvae .*)$", text, flags=re.M):
            commands.append((recipe.name, shlex.split(line, comments=True)[1:]))
    return commands


def test_readme_docs_and_recipe_commands_parse_with_the_current_names(capsys):
    commands = _shown_commands()
    assert len(commands) > 30
    shown = {argv[0] for _, argv in commands}
    assert {"reconstruct", "sample", "align", "cache-latents", "eval", "train", "convert"} <= shown
    for source, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{source}: `vfmvae {shlex.join(argv)}` does not parse: {capsys.readouterr().err}")
        err = capsys.readouterr().err
        assert "deprecated" not in err, f"{source}: `vfmvae {shlex.join(argv)}` uses an old spelling: {err}"


# --- names ------------------------------------------------------------------------------------------------------


def test_diffusion_registry_names_say_what_they_are():
    import vfmvae.diffusion.registry as registry
    from vfmvae.diffusion import DIFFUSION_MODELS
    from vfmvae.vfm import VFM_REGISTRY

    assert not hasattr(registry, "FAMILIES")  # vfmvae.vfm has the VFM families; this table holds DiTConfig fields
    assert set(registry.FAMILY_CONFIG_FIELDS) == {"sit", "lightningdit", "repa-sit", "reg-sit"}
    diffusion_names, vfm_names = set(DIFFUSION_MODELS.names()), set(VFM_REGISTRY)
    assert not any(n.endswith("-test") for n in diffusion_names) and not any(n.endswith("-tiny") for n in vfm_names)
    # every test-model name the docs, recipes and CLI help mention exists, in the registry its suffix belongs to
    texts = [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "configs").rglob("*.yaml"),
        *(ROOT / "src" / "vfmvae" / "cli").glob("*.py"),
    ]
    for path in texts:
        text = path.read_text()
        for name in re.findall(r"\b((?:sit|lightningdit|repa-sit|reg-sit)-(?:tiny|test))\b", text):
            assert name in diffusion_names, f"{path.name} names {name}, which is not a diffusion model"
        for name in re.findall(r"(?<![\w/-])([a-z0-9]+(?:-[a-z0-9]+)*-test)\b", text):
            assert name in vfm_names, f"{path.name} names {name}, which is not a registered VFM"
