"""`make demo` runs `python -m vfmvae.demo`: keep it working (it is what the README promises first)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    from vfmvae.demo import run

    monkeypatch.chdir(ROOT)  # the demo uses repository-relative recipes and test data, as `make demo` does
    run(tmp_path, tokenizer_steps=2)  # `make demo` trains 300 steps; two are enough to check the wiring
    out = capsys.readouterr().out
    assert "Demo finished" in out and "3 skipped" in out and "held-out PSNR" in out
    assert (tmp_path / "data" / "preview.png").is_file() and (tmp_path / "shards_grid.png").is_file()
    recon = json.loads((tmp_path / "recon-after.json").read_text())
    assert recon["protocol"]["num_images"] == 64 and recon["psnr"] > 5 and recon["rfid"] is None
    assert (tmp_path / "tokenizer" / "export" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "align_report" / "se_cknna.json").read_text())
    assert len(report["table"]) == 3 and (tmp_path / "align_report" / "se_cknna.png").is_file()
