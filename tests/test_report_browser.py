"""`vfmvae report` pages checked in a real browser (headless Chromium driven by playwright).

Skipped where playwright or Chromium is missing (Debian/Ubuntu: `apt-get install chromium`); `.ci/run` installs
Chromium when it runs as root, so CI always runs these.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfmvae.report_check import check_page, find_chromium

pytest.importorskip("playwright", reason='playwright is not installed (pip install "vfmvae[dev]")')
pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium found (apt-get install chromium, or set VFMVAE_CHROMIUM to a Chromium executable)",
)


def _run_folder(root: Path) -> Path:
    """A diffusion run as training leaves it: config, metrics log and two sample grids."""
    run = root / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("transport: {path: linear}\nrun: {total_steps: 20}\n")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss/mse": 1.0 / s}) + "\n" for s in range(1, 21))
    )
    rng = np.random.default_rng(0)
    for step in (10, 20):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(
            run / "samples" / f"step-{step:08d}.png"
        )
    return run


@pytest.fixture
def report(tmp_path):
    from vfmvae.cli import main

    run = _run_folder(tmp_path)
    assert main(["report", str(run)]) == 0
    return run / "report" / "index.html"


def test_report_images_decode_in_chromium(report, tmp_path):
    result = check_page(report, screenshot=tmp_path / "page.png")
    assert result.ok, result.problems()
    assert result.images >= 2  # the loss plot and the latest sample grid
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_checker_reports_broken_and_missing_images(report):
    page = report.read_text()
    grid = report.parent.parent / "samples" / "step-00000020.png"
    assert "step-00000020.png" in page and "plots/run-losses.png" in page
    # the file is there, its bitmap is not (a truncated PNG would not do: Chromium shows the part it has, at full size)
    grid.write_bytes(b"\x89PNG\r\n\x1a\n but then not an image at all")
    (report.parent / "plots" / "run-losses.png").unlink()  # and one image is missing
    result = check_page(report)
    assert not result.ok
    assert sorted(Path(src).name for src in result.broken_images) == ["run-losses.png", "step-00000020.png"]
    assert any("run-losses.png" in line for line in result.console_errors), result.console_errors  # the failed load
    assert any("image did not decode" in line for line in result.problems())
