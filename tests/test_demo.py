"""`make demo` runs `python -m vfmvae.demo`: keep it working (it is what the README promises first)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    from vfmvae.demo import run

    monkeypatch.chdir(ROOT)  # the demo uses repository-relative recipes and test data, as `make demo` does
    run(tmp_path, tokenizer_steps=2, diffusion_steps=2)  # `make demo` trains 300 + 400 steps; 2 check the wiring
    out = capsys.readouterr().out
    assert "Demo finished" in out and "3 skipped" in out and "held-out PSNR" in out
    assert (tmp_path / "data" / "preview.png").is_file() and (tmp_path / "shards_grid.png").is_file()
    recon = json.loads((tmp_path / "recon-after.json").read_text())
    assert recon["protocol"]["num_images"] == 64 and recon["psnr"] > 5 and recon["rfid"] is None
    assert (tmp_path / "tokenizer" / "export" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "align_report" / "se_cknna.json").read_text())
    assert len(report["table"]) == 4 and (tmp_path / "align_report" / "se_cknna.png").is_file()
    assert any(m.startswith("diffusion:") for m in report["table"])
    import numpy as np

    samples = np.load(tmp_path / "samples" / "samples.npz")
    assert samples["arr_0"].shape == (64, 64, 64, 3) and samples["arr_1"].tolist()[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    steps = json.loads((tmp_path / "commands.json").read_text())
    assert any("torchrun" in s["full_scale"] for s in steps)
    _assert_page_images_load(tmp_path / "report" / "index.html", minimum=8)


def _assert_page_images_load(page, minimum):
    """Every <img> of the page resolves to a file that decodes as an image (what a browser would load)."""
    import re

    from PIL import Image

    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(sources) >= minimum, sources
    for src in sources:
        with Image.open(page.parent / src) as img:
            img.load()
            assert img.width > 16 and img.height > 16
