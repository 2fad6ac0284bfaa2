"""The report says what its figures show: sample-grid captions from the labels drawn, and
curves with plain tick values (no offset notation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vfmvae.report import build_report
from vfmvae.sampling.generate import class_labels


def _sample_folder(root: Path, labels: list[int]) -> Path:
    from PIL import Image

    folder = root / "samples"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"num": len(labels)}))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "grid.png")
    np.savez(folder / "samples.npz", arr_0=np.zeros((len(labels), 4, 4, 3), np.uint8), arr_1=np.asarray(labels))
    return folder


def _caption(page: Path) -> str:
    text = page.read_text()
    return text.split('samples/grid.png" alt="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(
    "labels,expected",
    [
        (class_labels("balanced", 64, 8), "one class per column (classes 0, 1, 2, 3, 4, 5, 6, 7, left to right)"),
        (class_labels("balanced", 16, 3), "row by row (8 per row): 0 1 2 0 1 2 0 1; 2 0 1 2 0 1 2 0"),
        (class_labels("random", 16, 10, seed=0), "row by row (8 per row): "),
    ],
)
def test_sample_grid_caption_follows_the_labels_drawn(tmp_path, labels, expected):
    _sample_folder(tmp_path, labels)
    caption = _caption(build_report(tmp_path))
    assert expected in caption
    if "row by row" in expected:
        assert "one class per column" not in caption
        assert caption.endswith(" ".join(map(str, labels[8:16])))  # every cell named, the second row last


def test_curves_have_plain_tick_labels_without_offset(tmp_path, monkeypatch):
    """Values like 295.50 ... 295.56 or 1.00056 + 1e-7 s: matplotlib's default shows ticks as an offset
    ("+2.955e2", "1e-7+1.00056"); the report writes the values themselves."""
    import matplotlib.figure

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: {batch_size: 8}\n")
    records = [
        {"step": s, "images": 1_000_000 + 8 * s, "loss": 295.5 + 0.002 * s, "loss/tiny": 1.00056 + 1e-7 * s}
        for s in range(1, 31)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    offsets = []
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        fig.canvas.draw()
        offsets.extend(
            a.get_offset_text().get_text() for ax in fig.axes if ax.get_visible() for a in (ax.xaxis, ax.yaxis)
        )
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    build_report(run)
    assert len(offsets) == 4 and offsets == [""] * 4, offsets
