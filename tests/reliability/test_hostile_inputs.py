"""Hostile and broken inputs: bounded memory, no hangs, one clear line instead of a traceback.

Each row of the command-line table builds one bad input and asserts that `vfmvae` exits with code 2 and a
single stderr line that names the problem. The data cases check the bounds directly on the readers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_argv
from PIL import Image

from vfmvae.cli import main
from vfmvae.config import ConfigError, load_config
from vfmvae.data import shards as shards_mod
from vfmvae.data.images import decode_image
from vfmvae.data.loader import DataConfig, DataStream, NoUsableImages
from vfmvae.data.shards import iter_tar_samples, list_shards
from vfmvae.tokenizer import DecoderOutput

ROOT = Path(__file__).resolve().parents[2]

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _png_bytes(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], *, links: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


# --- the command line: one line, exit code 2 -------------------------------------------------------------


def _billion_laughs(tmp: Path) -> list[str]:
    (tmp / "bl.yaml").write_text(BILLION_LAUGHS)
    return ["train", "diffusion", "--recipe", str(tmp / "bl.yaml")]


def _python_tag_config(tmp: Path) -> list[str]:
    (tmp / "official.yaml").write_text("G_kwargs: !!python/object/apply:os.system ['echo pwned']\n")
    return [
        "convert",
        "official-tokenizer",
        "--config",
        str(tmp / "official.yaml"),
        "--weights",
        str(tmp / "w.pth"),
        "--vfm",
        str(tmp / "vfm"),
        "--out",
        str(tmp / "out"),
    ]


def _pickle_features(tmp: Path) -> list[str]:
    torch.save({"features": Evil()}, tmp / "evil.pt")
    return ["align", "metric", "--a", str(tmp / "evil.pt"), "--b", str(tmp / "evil.pt")]


def _pickle_official_weights(tmp: Path) -> list[str]:
    (tmp / "official.yaml").write_text("G_kwargs: {}\n")
    (tmp / "w.pth").write_bytes(pickle.dumps(Evil(), protocol=2))
    return [
        "convert",
        "official-lightningdit",
        "--weights",
        str(tmp / "w.pth"),
        "--arch",
        "lightningdit-tiny/1",
        "--out",
        str(tmp / "out"),
    ]


def _cuda_device(tmp: Path) -> list[str]:
    return ["sample", "--diffusion", str(tmp), "--num-samples", "2", "--out", str(tmp / "s"), "--device", "cuda"]


def _unknown_device(tmp: Path) -> list[str]:
    return ["sample", "--diffusion", str(tmp), "--num-samples", "2", "--out", str(tmp / "s"), "--device", "tpu9"]


def _name_too_long(tmp: Path) -> list[str]:
    return ["data", "synthetic", "--out", str(tmp / ("x" * 300)), "--num", "2", "--classes", "1", "--size", "16"]


def _zero_checkpoint_every(tmp: Path) -> list[str]:
    return train_argv(
        "diffusion", ROOT / "configs/diffusion/tiny.yaml", f"data.cache={tmp}", "run.checkpoint_every_images=0"
    )


def _pickle_latent_stats(tmp: Path) -> list[str]:
    from vfmvae.diffusion import create_diffusion_model

    create_diffusion_model("lightningdit-tiny").save_pretrained(tmp / "dit")
    torch.save({"mean": Evil()}, tmp / "evil.pt")
    return [
        "sample",
        "--diffusion",
        str(tmp / "dit"),
        "--latent-stats",
        str(tmp / "evil.pt"),
        "--tokenizer",
        str(tmp / "tok"),
        "--num-samples",
        "2",
        "--out",
        str(tmp / "s"),
        "--device",
        "cpu",
    ]


def _wrong_keys_weights(option: str):
    def build(tmp: Path) -> list[str]:
        # 400 long foreign keys: torch's strict load would dump them all (kilobytes) in its error
        torch.save({f"layer{i}.a_long_foreign_weight_name": torch.zeros(1) for i in range(400)}, tmp / "wrong.pth")
        for folder in ("ref", "rec"):
            (tmp / folder).mkdir()
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / folder / "a.png")
        return [
            "eval",
            "recon",
            "--reference",
            str(tmp / "ref"),
            "--reconstructions",
            str(tmp / "rec"),
            option,
            str(tmp / "wrong.pth"),
            "--device",
            "cpu",
        ]

    return build


CLI_CASES = {
    "billion-laughs recipe": (_billion_laughs, "expand to more than"),
    "python tag in an official config": (_python_tag_config, "not valid YAML"),
    "pickle as align features": (_pickle_features, "not a plain tensor file"),
    "pickle as official weights": (_pickle_official_weights, "not a plain tensor file"),
    "--device cuda without CUDA": (_cuda_device, "CUDA is not available"),
    "unknown device": (_unknown_device, "unknown device"),
    "file name too long": (_name_too_long, "File name too long"),
    "run.checkpoint_every_images=0": (_zero_checkpoint_every, "checkpoint_every_images must be > 0"),
    "pickle as --latent-stats": (_pickle_latent_stats, "not a plain tensor file"),
    "wrong-keys Inception file": (
        _wrong_keys_weights("--inception"),
        "does not fit this model: Conv2d_1a_3x3.conv.weight (32, 3, 3, 3) is missing",
    ),
    "wrong-keys LPIPS file": (_wrong_keys_weights("--lpips"), "expected torchvision's vgg16-397923af.pth"),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA row needs a machine without CUDA")
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_reports_bad_input_in_one_line(case, tmp_path, capsys):
    build, expected = CLI_CASES[case]
    argv = build(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "weights_only=False" not in err and "pwned" not in err


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    import argparse

    import vfmvae.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of training, caching or sampling

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="train", verbose=False, func=interrupted)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main([]) == 2
    assert capsys.readouterr().err.strip() == "vfmvae train: interrupted; re-run the same command to resume"


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--diffusion", "d", "--num-samples", "0", "--out", "o"],
        ["sample", "--diffusion", "d", "--num-samples", "4", "--out", "o", "--batch-size", "0"],
        ["cache-latents", "--tokenizer", "t", "--data", "d", "--out", "o", "--batch-size", "0"],
    ],
)
def test_zero_counts_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, key",
    [
        ("run.checkpoint_every_images=0", "checkpoint_every_images"),
        ("run.log_every_images=0", "log_every_images"),
        ("run.batch_size=0", "batch_size"),
        ("run.ema_halflife_images=0", "ema_halflife_images"),
        ("run.device=cuda:7", "device"),
    ],
)
def test_run_settings_are_validated_at_config_load(override, key, tmp_path):
    from vfmvae.diffusion_training import DiffusionTrainConfig

    if torch.cuda.device_count() > 7 and key == "device":
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError, match=key):
        load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/tiny.yaml", [f"data.cache={tmp_path}", override])


@pytest.mark.parametrize(
    "override",
    ["run.log_every_images=0", "run.checkpoint_every_images=0", "run.batch_size=0", "run.ema_halflife_images=0"],
)
def test_tokenizer_run_settings_are_validated_at_config_load(override, tmp_path):
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig

    key = override.split("=")[0].split(".")[1]
    with pytest.raises(ConfigError, match=key):
        load_config(TokenizerTrainConfig, ROOT / "configs/tokenizer/tiny.yaml", [f"data.source={tmp_path}", override])


def test_latent_stats_without_mean_names_the_key(tmp_path):
    from vfmvae.sampling.pipeline import LatentStats

    (tmp_path / "stats.json").write_text(json.dumps({"std": [1.0]}))
    with pytest.raises(ValueError, match="no 'mean' entry"):
        LatentStats.load(tmp_path / "stats.json")


def test_billion_laughs_in_an_override_is_refused():
    # The alias bomb as one --set value (YAML flow style, one line): 10^7 values from 100 characters.
    flow = "[" + ", ".join(f"&l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 10) + "]" for i in range(7)) + "]"
    with pytest.raises(ConfigError, match="expand to more than"):
        load_config(DataConfig, None, ["source=.", f"seed={flow}"])


# --- memory: refused from the headers, under a memory cap ------------------------------------------------


def _run_capped(code: str, cap_gib: float = 4.5) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose address space is capped (torch alone maps ~3.4 GB)."""
    prelude = (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(cap_gib * 2**30)}, {int(cap_gib * 2**30)}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )


def _npz_with_declared_shape(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose `mu` header declares `shape` (gigabytes) over a few bytes of data: 1 KB on disk."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mu.npy", buf.getvalue() + b"\0" * 64)  # the header writer adds the magic
        for name, arr in (("sigma", np.eye(4)), ("mu_s", np.zeros(4)), ("sigma_s", np.eye(4))):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(f"{name}.npy", b.getvalue())
    return path


def test_reference_npz_with_a_huge_declared_array_is_refused_before_loading(tmp_path):
    ref = _npz_with_declared_shape(tmp_path / "ref.npz", (2**28,))  # 2 GiB of float64 declared
    result = _run_capped(f"""
        from pathlib import Path
        from vfmvae.evaluation.generation import load_reference
        try:
            load_reference(Path({str(ref)!r}))
        except ValueError as err:
            print("REFUSED", err)
    """)
    assert "REFUSED" in result.stdout and "mu has shape (268435456,)" in result.stdout, result.stdout + result.stderr
    assert "MemoryError" not in result.stderr


def test_huge_label_does_not_size_the_class_embedding(tmp_path, synthetic_dir):
    """A 30,000,000 label would allocate a 30M-row embedding (7.7 GB for XL): refused from the labels alone."""
    from vfmvae.diffusion_training import DiffusionTrainConfig
    from vfmvae.diffusion_training.trainer import build_model

    class Cache:
        manifest = {"latent_shape": [4, 8, 8]}

        def __init__(self, labels):
            self.labels = torch.tensor(labels)

        def column(self, name):
            return self.labels

    cfg = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/tiny.yaml", [f"data.cache={tmp_path}"])
    with pytest.raises(ConfigError, match="30,000,001-class embedding"):
        build_model(cfg, Cache([0, 30_000_000]))
    with pytest.raises(ConfigError, match="label -7 found"):
        build_model(cfg, Cache([3, -7]))


# --- data: no hangs, bounded members, right decoding ------------------------------------------------------


def test_fifo_named_like_a_shard_is_not_listed(tmp_path):
    _tar(tmp_path / "a.tar", [("000.png", _png_bytes()), ("000.cls", b"1")])
    os.mkfifo(tmp_path / "b.tar")  # opening it would block forever
    assert list_shards(tmp_path) == [tmp_path / "a.tar"]


def test_compressed_shard_is_refused_unless_asked(tmp_path):
    plain = _tar(tmp_path / "p.tar", [("000.png", _png_bytes()), ("000.cls", b"1")])
    (tmp_path / "z.tar").write_bytes(gzip.compress(plain.read_bytes()))
    ((key, bad),) = list(iter_tar_samples(tmp_path / "z.tar"))
    assert bad.reason == "compressed-shard" and "data.compressed_shards=true" in str(bad)
    ((key, files),) = list(iter_tar_samples(tmp_path / "z.tar", allow_compressed=True))
    assert set(files) == {"png", "cls"}


def test_members_over_the_caps_and_links_are_skipped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_mod, "MAX_IMAGE_MEMBER_BYTES", 1000)
    big_png = b"\x89PNG" + bytes(2000)  # over the (lowered) cap: skipped from its header, never decoded
    shard = _tar(
        tmp_path / "s.tar",
        [
            ("000.png", _png_bytes(4)),
            ("000.json", b"x" * ((1 << 20) + 1)),
            ("001.png", big_png),
            ("002.png", _png_bytes(4)),
        ],
        links=("003.png",),
    )
    items = list(iter_tar_samples(shard))
    bad = {key: it.reason for key, it in items if isinstance(it, shards_mod.BadImage)}
    good = {key: sorted(it) for key, it in items if not isinstance(it, shards_mod.BadImage)}
    assert bad == {"000.json": "member-too-large", "001.png": "member-too-large", "003.png": "link-member"}
    assert good == {"000": ["png"], "002": ["png"]}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["folder", "shards"])
def test_training_data_with_no_usable_image_stops_with_the_reasons(tmp_path, fmt):
    if fmt == "folder":
        for c in ("a", "b"):
            (tmp_path / c).mkdir()
            (tmp_path / c / "x.png").write_bytes(b"")
            (tmp_path / c / "y.png").write_bytes(b"not a png")
    else:
        _tar(tmp_path / "s0.tar", [("000.png", b"not a png"), ("000.cls", b"0")])
        _tar(tmp_path / "s1.tar", [("001.png", b""), ("001.cls", b"0")])
    stream = DataStream(DataConfig(source=tmp_path, resolution=16, num_workers=0), batch_size=2)
    with pytest.raises(NoUsableImages, match=r"no usable images in .* skipped \("):
        next(stream)


def test_sixteen_bit_grey_png_is_scaled_from_its_full_range():
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 200, np.uint16)).save(buf, format="PNG")  # dark: 200 / 65535
    rgb = np.asarray(decode_image(buf.getvalue()))
    assert rgb.max() <= 1, rgb.max()


def test_float_tiff_is_scaled_from_zero_one():
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(buf, format="TIFF")
    rgb = np.asarray(decode_image(buf.getvalue()))
    assert rgb.min() == rgb.max() == 128


# --- model folders: declared sizes checked against the weights before allocation -------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from vfmvae.diffusion import create_diffusion_model

    out = tmp_path_factory.mktemp("model") / "ldit"
    create_diffusion_model("lightningdit-tiny").save_pretrained(out)
    return out


def _with_config(src: Path, dst: Path, **changes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    meta["config"].update(changes)
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def test_model_config_declaring_huge_sizes_is_refused_before_allocating(tiny_model_dir, tmp_path):
    """hidden 65,536 x 64 layers would take ~24 GB: refused from the weight file's header, under a memory cap."""
    bad = _with_config(tiny_model_dir, tmp_path / "huge", hidden_size=65_536, depth=64, num_heads=16)
    result = _run_capped(f"""
        from vfmvae.checkpoint.serialize import CheckpointFormatError
        from vfmvae.diffusion import DiffusionTransformer
        try:
            DiffusionTransformer.from_pretrained({str(bad)!r})
        except CheckpointFormatError as err:
            print("REFUSED", str(err).splitlines()[0])
    """)
    # 64 layers where the file holds 2: the meta build stops at the header's budget (issue 34)
    assert "REFUSED" in result.stdout and "declares a larger DiffusionTransformer" in result.stdout, (
        result.stdout + result.stderr
    )


def test_model_config_with_a_negative_size_is_one_error(tiny_model_dir, tmp_path):
    from vfmvae.checkpoint.serialize import CheckpointFormatError
    from vfmvae.diffusion import DiffusionTransformer

    bad = _with_config(tiny_model_dir, tmp_path / "neg", depth=-3)
    with pytest.raises(CheckpointFormatError, match="config.json"):
        DiffusionTransformer.from_pretrained(bad)


def test_run_log_ends_a_torn_line_before_the_next_record(tmp_path):
    from vfmvae.training.run_log import RunLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # full disk mid-record
    RunLog(tmp_path, tensorboard=False, x_key="step").write({"step": 3, "loss": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[-1] == '{"step": 3, "loss": 0.25}' and json.loads(lines[-1])["step"] == 3


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from vfmvae.checkpoint.pretrained import resolve_model_dir

    def no_network(*args, **kwargs):
        raise AssertionError("a hub download was attempted for a local path")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs exists, but has no 'tok'"):
        resolve_model_dir("runs/tok")


def test_pipeline_refuses_out_of_range_labels():
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.sampling.pipeline import LatentStats, VFMVAEPipeline

    model = create_diffusion_model("lightningdit-tiny")
    pipe = VFMVAEPipeline(model, torch.nn.Identity(), LatentStats(torch.zeros(8), torch.ones(8)))
    for labels in ([0, 10], [-1]):
        with pytest.raises(ValueError, match=r"outside this model's classes 0\.\.9"):
            pipe.latents(labels)


@pytest.mark.parametrize("which", ["empty", "file"])
def test_eval_recon_names_an_empty_folder_or_a_file(which, tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    rec = tmp_path / "rec"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ref" / "a.png")
    if which == "empty":
        rec.mkdir()
    else:
        rec.write_bytes(b"x")
    ref = tmp_path / "ref"
    assert main(["eval", "recon", "--reference", str(ref), "--reconstructions", str(rec)]) == 2
    err = capsys.readouterr().err.strip()
    assert (f"no images in {rec}" if which == "empty" else f"{rec} is a file") in err, err


# --- labels when cached, all-bad caching, another architecture, torn files ----------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from helpers import tiny_official_tokenizer

    return tiny_official_tokenizer(tmp_path_factory.mktemp("hostile-tok") / "tok")


def _shards_with_labels(tmp: Path, labels: list[bytes | None]) -> Path:
    """One shard of 32-px PNGs whose `.cls` members hold `labels` (None: no .cls member)."""
    (tmp / "data").mkdir()
    members = []
    for i, label in enumerate(labels):
        members.append((f"{i:03d}.png", _png_bytes()))
        if label is not None:
            members.append((f"{i:03d}.cls", label))
    _tar(tmp / "data" / "s0.tar", members)
    return tmp / "data"


def _flat_folder(tmp: Path) -> Path:
    (tmp / "data").mkdir()
    for i in range(3):
        (tmp / "data" / f"{i}.png").write_bytes(_png_bytes())
    return tmp / "data"


def _all_bad_folder(tmp: Path) -> Path:
    for c in ("a", "b"):
        (tmp / "data" / c).mkdir(parents=True)
        (tmp / "data" / c / "x.png").write_bytes(b"")
        (tmp / "data" / c / "y.png").write_bytes(b"not a png")
    return tmp / "data"


CACHE_CASES = {  # data builder, extra options, expected message
    "negative label in a shard": (lambda t: _shards_with_labels(t, [b"1", b"-7"]), [], "001 in {data} has label -7"),
    "missing .cls label in a shard": (
        lambda t: _shards_with_labels(t, [b"0", None]),
        [],
        "001 in {data} has no class label",
    ),
    "label of 30,000,000": (lambda t: _shards_with_labels(t, [b"30000000"]), [], "label 30,000,000, outside 0..99,999"),
    "label beyond --num-classes": (
        lambda t: _shards_with_labels(t, [b"0", b"4"]),
        ["--num-classes", "4"],
        "label 4, outside 0..3 (--num-classes 4)",
    ),
    "flat folder (no labels)": (_flat_folder, [], "has no class label (a flat folder"),
    "every image bad": (_all_bad_folder, [], "no usable images in {data} (4 skipped ("),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cache_latents_refuses_bad_labels_and_unusable_data_in_one_line(case, tokenizer_dir, tmp_path, capsys):
    """Labels are checked when cached (a folder's from its listing before anything is encoded, a shard's before
    its batch is encoded); data without one usable image says so instead of naming a missing progress file."""
    build, extra, expected = CACHE_CASES[case]
    data, out = build(tmp_path), tmp_path / "cache"
    argv = [
        "cache-latents",
        "--tokenizer",
        str(tokenizer_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("vfmvae ")]  # beside the progress bar
    assert len(errors) == 1 and expected.format(data=data) in errors[0], err
    assert "Traceback" not in err and "progress-r00" not in err, err
    assert not list(out.glob("shard-*")) and not (out / "cache.json").exists()  # nothing cached


def _fake_cache(path: Path, n: int = 8, shape: tuple[int, int, int] = (8, 4, 4), width: int = 64) -> Path:
    """A finished latent cache of `n` random latents in the cache format (with flips and VFM features)."""
    from vfmvae.checkpoint.serialize import save_tensors

    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    tensors = {
        "latents": torch.randn(n, *shape, generator=g),
        "latents_flip": torch.randn(n, *shape, generator=g),
        "labels": torch.arange(n) % 4,
        "vfm_features": torch.randn(n, 16, width, generator=g).half(),
    }
    save_tensors(path / "shard-r00-00000.safetensors", tensors, metadata={"count": str(n)})
    manifest = {
        "kind": "vfmvae-latent-cache",
        "format_version": 1,
        "latent_shape": list(shape),
        "num_items": n,
        "shards": [{"file": "shard-r00-00000.safetensors", "count": n}],
        "flip": True,
        "mean": [0.0] * shape[0],
        "std": [1.0] * shape[0],
    }
    (path / "cache.json").write_text(json.dumps(manifest))
    return path


def _checkpoint_of(run_dir: Path, model: dict[str, torch.Tensor]) -> Path:
    from vfmvae.checkpoint import CheckpointManager, capture_rng_state

    return CheckpointManager(run_dir).save(
        1, images_seen=8, model=model, ema=model, state={}, rank_state={"rng": capture_rng_state()}
    )


def test_resuming_a_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys, monkeypatch):
    """`--resume PATH` of a model with other sizes: the checkpoint and first mismatching parameter, both shapes."""
    from vfmvae.diffusion import create_diffusion_model

    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the whole line fits the 300-character error
    other = create_diffusion_model("lightningdit-tiny", in_channels=4, input_size=4, num_classes=4)  # cache: 8 ch
    ckpt = _checkpoint_of(Path("other"), other.state_dict())
    argv = [
        "train",
        "diffusion",
        "--recipe",
        str(ROOT / "configs/diffusion/tiny.yaml"),
        "--set",
        f"data.cache={_fake_cache(Path('cache'))}",
        "--set",
        "run.dir=run",
        "--set",
        "run.device=cpu",
        "--resume",
        str(ckpt),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (
        f"{ckpt / 'model.safetensors'} does not fit this model: x_embedder.proj.weight "
        "is (64, 4, 1, 1) in the checkpoint but (64, 8, 1, 1) in this model"
    ) in err, err
    assert err.endswith(
        "written by another architecture: resume it with the recipe that wrote it, or use another run.dir"
    ), err  # the advice is not cut off


def test_tokenizer_resume_of_another_architecture_is_one_line(tmp_path, synthetic_dir):
    from vfmvae.checkpoint import CheckpointFormatError
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import build_generator, train_tokenizer

    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny.yaml",
        [
            f"data.source={synthetic_dir / 'images'}",
            f"run.dir={tmp_path / 'run'}",
            "run.device=cpu",
            "data.num_workers=0",
        ],
    )
    state = {k: v for k, v in build_generator(cfg).state_dict().items() if not k.startswith("vfm.")}
    key = next(iter(state))
    shape = tuple(state[key].shape)
    state[key] = torch.zeros(shape[0] + 1, *shape[1:])  # one layer of another width
    ckpt = _checkpoint_of(tmp_path / "other-run", state)
    with pytest.raises(CheckpointFormatError) as err:
        train_tokenizer(cfg, resume=str(ckpt), progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{key} is {(shape[0] + 1, *shape[1:])} in the checkpoint but {shape} in this model" in message, message


def test_load_state_strict_names_missing_and_unexpected_keys_and_skips_optional_ones():
    from vfmvae.checkpoint import CheckpointFormatError, load_state_strict

    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = module.state_dict()
    with pytest.raises(
        CheckpointFormatError, match=r"^ck does not fit this model: 1\.bias \(1,\) is missing from the checkpoint;"
    ):
        load_state_strict(module, {k: v for k, v in state.items() if k != "1.bias"}, "ck")
    with pytest.raises(CheckpointFormatError, match=r"extra \(2,\) is in the checkpoint but not in this model"):
        load_state_strict(module, {**state, "extra": torch.zeros(2)}, "ck")
    new = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    load_state_strict(new, {k: v for k, v in state.items() if not k.startswith("1.")}, "ck", optional_prefixes=("1.",))
    torch.testing.assert_close(new[0].weight, module[0].weight)


class _ConvDecoder(torch.nn.Module):
    """A stand-in tokenizer (1x1 conv to RGB, upsampled x4): the resume logic does not depend on the decoder, and
    the tiny real one takes most of a CPU minute under load."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.to_rgb = torch.nn.Conv2d(8, 3, 1)

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(torch.nn.functional.interpolate(torch.tanh(self.to_rgb(z)), scale_factor=4), [])


def test_torn_pngs_in_a_sample_folder_are_regenerated_on_resume(tmp_path, caplog):
    """A PNG cut short (killed mid-write by an older version, a torn disk) is ours: regenerated, not skipped."""
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.sampling import SamplerConfig
    from vfmvae.sampling.generate import generate_samples
    from vfmvae.sampling.pipeline import LatentStats, VFMVAEPipeline

    torch.manual_seed(0)
    model = create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    pipe = VFMVAEPipeline(model, _ConvDecoder(), LatentStats(torch.zeros(8), torch.ones(8)))

    def run():
        return generate_samples(
            pipe,
            tmp_path / "s",
            4,
            config=SamplerConfig(steps=2),
            batch_size=4,
            progress=False,
        )

    run()
    expected = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    pngs = [tmp_path / "s" / "images" / f"{i:06d}.png" for i in range(4)]
    whole = [p.read_bytes() for p in pngs]
    pngs[0].write_bytes(whole[0][: len(whole[0]) // 2])  # truncated
    pngs[1].write_bytes(whole[1][:-40] + bytes(40))  # zero-filled tail (a torn disk)
    pngs[2].write_bytes(b"")  # empty
    with caplog.at_level("WARNING", logger="vfmvae.sampling.generate"):
        run()
    assert "3 incomplete PNG(s)" in caplog.text
    assert all(p.read_bytes()[-12:] == w[-12:] for p, w in zip(pngs, whole))
    assert pngs[3].read_bytes() == whole[3]  # a whole one is kept as it was
    arr = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    # regenerated in a batch of 3, not 4: float32 kernels may differ by one uint8 level
    assert np.abs(arr.astype(int) - expected.astype(int)).max() <= 1


def test_report_skips_a_torn_metrics_line_with_a_warning(tmp_path, caplog):
    from vfmvae.report import _records

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with caplog.at_level("WARNING", logger="vfmvae.report"):
        assert [r["step"] for r in _records(tmp_path)] == [1, 3]
    assert "skipped 1 torn line(s) (line 2)" in caplog.text


def test_tar_special_members_are_counted_as_skipped(tmp_path):
    """Symlinks, hard links, devices and FIFOs inside a shard are skipped from their headers, never followed."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000.png", _png_bytes()), ("000.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind in (
            ("001.png", tarfile.SYMTYPE),
            ("002.png", tarfile.LNKTYPE),
            ("003.png", tarfile.CHRTYPE),
            ("004.png", tarfile.BLKTYPE),
            ("005.png", tarfile.FIFOTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/dev/zero" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info)
    reasons = {key: it.reason for key, it in iter_tar_samples(shard) if isinstance(it, shards_mod.BadImage)}
    assert reasons == {
        "001.png": "link-member",
        "002.png": "link-member",
        "003.png": "special-member",
        "004.png": "special-member",
        "005.png": "special-member",
    }
    from vfmvae.data import ImageOptions
    from vfmvae.data.shards import TarShardDataset

    skips = [it["reason"] for it in TarShardDataset(tmp_path, ImageOptions(32), loop=False) if it.get("bad")]
    assert sorted(skips) == ["link-member"] * 2 + ["special-member"] * 3


# A child that saves checkpoints (keep=1) and stops dead at one point of a save, says so, and waits to be killed.
_STOPPED_SAVE = """
import os, shutil, sys, threading
from pathlib import Path
import torch
import vfmvae.checkpoint.training as training
from vfmvae.checkpoint import CheckpointManager

where, run = sys.argv[1], Path(sys.argv[2])
manager = CheckpointManager(run, keep=1)
weights = lambda step: {"w": torch.full((1000,), float(step))}
manager.save(1, images_seen=1, model=weights(1))

def stop():
    print("STOPPED", flush=True)
    threading.Event().wait()  # until the SIGKILL

if where == "building":  # the step folder half built under its temporary name
    real = training.save_tensors
    training.save_tensors = lambda path, *a, **k: stop() if path.name == "ema.safetensors" else real(path, *a, **k)
    manager.save(2, images_seen=2, model=weights(2), ema=weights(2))
elif where == "pruning":  # the old checkpoint half deleted
    real = shutil.rmtree
    def rmtree(path, *a, **k):
        if Path(path).name.startswith(".step-00000001"):
            os.unlink(Path(path) / "model.safetensors")
            stop()
        return real(path, *a, **k)
    shutil.rmtree = rmtree
    manager.save(2, images_seen=2, model=weights(2))
else:  # replacing step 1 in place, between parking the old folder and renaming the new one in
    real = os.rename
    def rename(src, dst):
        if Path(src).name.endswith(".tmp") and Path(dst).name == "step-00000001":
            stop()
        return real(src, dst)
    os.rename = rename
    manager.save(1, images_seen=1, model=weights(1))
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "where, debris, last",
    [
        ("building", {".staging-step-00000002", ".step-00000002.*.tmp"}, 1),
        ("pruning", {".step-00000001.pruning"}, 2),
        ("replacing", {".step-00000001.old", ".step-00000001.*.tmp"}, 1),  # and no step-00000001: parked, restored
    ],
)
def test_checkpoint_debris_of_a_killed_save_is_removed_at_the_next_start(where, debris, last, tmp_path):
    """SIGKILL at a point of a save (an event the child reports, not a clock); the next start of a run on the folder
    removes what the save left, restores a parked checkpoint, and touches nothing that is not ours."""
    import fnmatch
    import signal

    from vfmvae.checkpoint import CheckpointManager
    from vfmvae.training.run_folder import claim_run_folder, write_run_config

    run = tmp_path / "run"
    cfg = DataConfig(source=tmp_path)
    run.mkdir()
    write_run_config(run, cfg)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    child = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_SAVE, where, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "STOPPED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    names = lambda: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    left = names()
    assert all(any(fnmatch.fnmatch(n, pattern) for n in left) for pattern in debris), left  # the kill left them
    (run / "checkpoints" / "notes.txt").write_text("mine")  # not ours: kept
    (run / "checkpoints" / ".step-zzz.tmp").mkdir()  # not a name we create: kept
    claim_run_folder(run, cfg, "auto").release()
    assert names() == [".step-zzz.tmp", "notes.txt", f"step-{last:08d}"]
    ckpt = CheckpointManager(run).load()
    assert ckpt.step == last and float(ckpt.model["w"][0]) == last


def test_half_pruned_folders_of_older_versions_are_removed_but_newer_incomplete_ones_kept(tmp_path):
    """Older versions deleted a pruned checkpoint in place: an incomplete step folder older than the newest complete
    one is such a leftover. An incomplete folder newer than that is not judged here (the run folder check says)."""
    from vfmvae.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        manager.save(step, images_seen=step, model={"w": torch.zeros(4)})
    (manager.root / "step-00000001" / "model.safetensors").unlink()  # half deleted by an old prune
    (manager.root / "step-00000003" / "meta.json").unlink()  # damaged after the newest complete one
    assert [p.name for p in manager.remove_debris()] == ["step-00000001"]
    assert sorted(p.name for p in manager.root.iterdir()) == ["step-00000002", "step-00000003"]
