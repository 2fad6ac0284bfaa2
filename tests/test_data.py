import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmvae.data import (
    DataConfig,
    DataStream,
    ImageFolderDataset,
    ImageOptions,
    ResumableSampler,
    SkipCounter,
    TarShardDataset,
    center_crop_adm,
    decode_image,
)
from vfmvae.data.inspect import inspect_dataset
from vfmvae.data.synthetic import SyntheticConfig, class_names, write_synthetic_dataset


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_set_is_deterministic_balanced_and_labelled(tmp_path, synthetic_dir):
    write_synthetic_dataset(
        SyntheticConfig(out=tmp_path, num=64, classes=4, size=32, shards=True, shard_size=16), progress=False
    )
    assert _digest(tmp_path / "images") == _digest(synthetic_dir / "images")
    assert _digest(tmp_path / "shards") == _digest(synthetic_dir / "shards")
    ds = ImageFolderDataset(synthetic_dir / "images", ImageOptions(32))
    assert ds.classes == class_names(4) and len(ds) == 64
    assert np.bincount(ds.labels).tolist() == [16, 16, 16, 16]
    # classes are visibly different: mean colours of class means are far apart
    means = torch.stack(
        [
            torch.stack([ds[i]["image"].float().mean((1, 2)) for i in range(64) if ds.labels[i] == c]).mean(0)
            for c in range(4)
        ]
    )
    assert torch.cdist(means, means).add(torch.eye(4) * 1e3).min() > 5


def test_folder_and_shards_hold_the_same_samples(synthetic_dir):
    folder = ImageFolderDataset(synthetic_dir / "images", ImageOptions(32))
    by_name = {Path(folder.files[i]).stem: (folder[i]["image"], folder.labels[i]) for i in range(len(folder))}
    shards = TarShardDataset(synthetic_dir / "shards", ImageOptions(32), loop=False)
    items = list(shards)
    assert len(items) == 64
    for it in items:
        image, label = by_name[it["name"][-6:]]
        assert torch.equal(it["image"], image) and it["label"] == label


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, ImageOptions(16))
    assert ds.classes == [] and [ds[i]["label"] for i in range(3)] == [-1, -1, -1]
    assert ds[0]["image"].shape == (3, 16, 16) and ds[0]["image"].dtype == torch.uint8


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _bad_and_odd_files() -> dict[str, bytes]:
    good = _png(Image.new("RGB", (48, 40), (10, 200, 30)))
    sixteen = np.full((40, 40), 40000, dtype=np.uint16)
    return {
        "good.png": good,
        "truncated.png": good[: len(good) // 2],
        "zero.png": b"",
        "notes.txt": b"this is not an image",
        "tiny.png": _png(Image.new("RGB", (4, 4))),
        "huge.png": _png(Image.new("L", (3000, 3000))),
        "cmyk.jpg": _png(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
        "gray16.png": _png(Image.fromarray(sixteen)),
        "gray.png": _png(Image.new("L", (40, 40), 128)),
        "alpha.png": _png(Image.new("RGBA", (40, 40), (255, 0, 0, 128))),
        "palette.gif": _png(Image.new("P", (40, 40), 3), "GIF"),
    }


def test_decode_image_reasons_and_modes():
    files = _bad_and_odd_files()
    reasons = {}
    for name, data in files.items():
        try:
            img = decode_image(data, min_size=16, max_pixels=4_000_000 if name != "huge.png" else 1_000_000)
            assert img.mode == "RGB"
            reasons[name] = "ok"
        except Exception as err:  # noqa: BLE001 - we assert on the category below
            reasons[name] = getattr(err, "reason", repr(err))
    assert reasons == {
        "good.png": "ok",
        "truncated.png": "corrupt",
        "zero.png": "zero-byte",
        "notes.txt": "not-an-image",
        "tiny.png": "too-small",
        "huge.png": "too-large",
        "cmyk.jpg": "ok",
        "gray16.png": "ok",
        "gray.png": "ok",
        "alpha.png": "ok",
        "palette.gif": "ok",
    }
    gray16 = np.asarray(decode_image(files["gray16.png"]))
    assert 150 < gray16.mean() < 160  # 40000/65535 of full scale, not clipped to white


def test_bad_files_are_skipped_and_counted_in_folders_and_shards(tmp_path):
    files = _bad_and_odd_files()
    folder = tmp_path / "folder" / "only-class"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cfg = DataConfig(source=tmp_path / "folder", resolution=32, num_workers=0, max_pixels=4_000_000, hflip=False)
    report = inspect_dataset(cfg, progress=False)
    expected_bad = {"corrupt": 1, "zero-byte": 1, "not-an-image": 1, "too-small": 1, "too-large": 1}
    assert report.skipped_by_reason == expected_bad and report.num_skipped == 5 and report.num_images == 6

    # the same files as one tar shard, plus a truncated second shard
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    with tarfile.open(shard_dir / "a.tar", "w") as tar:
        for i, (name, data) in enumerate(files.items()):
            ext = "png" if name != "notes.txt" else "txt"
            for suffix, payload in ((ext, data), ("cls", b"0")):
                info = tarfile.TarInfo(f"{i:04d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    whole = (shard_dir / "a.tar").read_bytes()
    (shard_dir / "b.tar").write_bytes(whole[: len(whole) // 3])
    cfg = DataConfig(source=shard_dir, resolution=32, num_workers=0, max_pixels=4_000_000, hflip=False)
    report = inspect_dataset(cfg, progress=False)
    assert report.num_skipped >= 6 and report.skipped_by_reason["corrupt-shard"] == 1
    assert report.skipped_by_reason["no-image-in-sample"] == 2  # notes.txt in both copies
    assert report.num_images >= 6


def test_center_crop_adm_matches_its_definition():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8))
    out = center_crop_adm(img, 64)
    # definition: BOX-halve while short side >= 2*64 (300->150->75), BICUBIC to short side 64, centre crop
    half = img.resize((350, 150), Image.BOX).resize((175, 75), Image.BOX)
    scaled = np.asarray(half.resize((round(175 * 64 / 75), 64), Image.BICUBIC))
    left = (scaled.shape[1] - 64) // 2
    assert np.array_equal(np.asarray(out), scaled[:, left : left + 64])
    same = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(center_crop_adm(same, 64)), np.asarray(same))


def test_sampler_ranks_partition_the_single_process_batch():
    n, batch, world = 10, 3, 2
    single = ResumableSampler(n, seed=1)
    per_rank = [ResumableSampler(n, rank=r, world=world, seed=1) for r in range(world)]
    it1 = iter(single)
    its = [iter(s) for s in per_rank]
    for _ in range(7):  # crosses epoch boundaries
        big = [next(it1) for _ in range(batch * world)]
        small = [x for it in its for x in [next(it) for _ in range(batch)]]
        assert sorted(big) == sorted(small)
    resumed = iter(ResumableSampler(n, seed=1, start=7 * batch * world))
    assert [next(resumed) for _ in range(5)] == [next(it1) for _ in range(5)]


@pytest.mark.parametrize("source", ["images", "shards"])
def test_data_stream_resumes_exactly(synthetic_dir, source):
    cfg = DataConfig(source=synthetic_dir / source, resolution=32, num_workers=2, seed=3)
    full = DataStream(cfg, batch_size=5)
    reference = [next(full) for _ in range(9)]
    first = DataStream(cfg, batch_size=5)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    resumed = DataStream(cfg, batch_size=5, state=state)
    for expected in reference[4:]:
        got = next(resumed)
        assert got["name"] == expected["name"]
        assert torch.equal(got["image"], expected["image"])
    # flips are on and applied to some samples but are a function of (seed, epoch, index) only
    assert any(
        not torch.equal(a["image"], b["image"])
        for a, b in zip(
            reference,
            DataStream(
                DataConfig(source=synthetic_dir / source, resolution=32, num_workers=0, seed=3, hflip=False),
                batch_size=5,
            ),
        )
    )


def test_skip_counter_summary():
    c = SkipCounter(log_first=1)
    c.add("a", "corrupt")
    c.add("b", "corrupt")
    c.add("c", "zero-byte")
    assert c.as_dict() == {"corrupt": 2, "zero-byte": 1} and c.summary() == "3 skipped (corrupt: 2, zero-byte: 1)"
