"""CKNNA: parity with the official/platonic-rep code, invariances, and the align commands."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vfmvae.alignment import all_metrics, cknna, preprocess
from vfmvae.alignment.metrics import clip_outliers, hsic_unbiased

REF = Path(__file__).parent / "data" / "cknna_reference"


def _pair(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 24, generator=g)
    b = a @ (torch.randn(24, 16, generator=g) / 5) + 0.5 * torch.randn(n, 16, generator=g)
    return a, b


@pytest.mark.skipif(not (REF / "expected.json").is_file(), reason="reference data not generated")
def test_matches_the_official_implementation():
    expected = json.loads((REF / "expected.json").read_text())
    feats = load_file(REF / "features.safetensors")
    checked = 0
    for case, values in expected.items():
        if case == "notes" or f"{case}_A" not in feats:
            continue
        a = feats[f"{case}_A"]
        b = feats.get(f"{case}_B", a)
        ours = all_metrics(a, b, topk=10)
        for metric in ("cknna", "mutual_knn", "cka", "unbiased_cka"):
            ref = values["official_float64"][metric]
            assert ours[metric] == pytest.approx(ref, abs=1e-6), (case, metric, ours[metric], ref)
            assert ours[metric] == pytest.approx(values["official_float32"][metric], abs=2e-5), (case, metric)
        raw = all_metrics(a.double(), b.double(), topk=10, preprocess_mode="none")
        assert raw["cknna"] == pytest.approx(values["raw_float64"]["cknna"], abs=1e-6), case
        checked += 1
    assert checked >= 3


def test_dense_reference_formula_on_small_case():
    """The sparse implementation equals a direct dense transcription of the definition."""
    a, b = (preprocess(x).double() for x in _pair())
    n, k = a.shape[0], 10

    def mask(kernel):
        kk = kernel.clone().fill_diagonal_(float("-inf"))
        return torch.zeros(n, n, dtype=torch.float64).scatter_(1, kk.topk(k, dim=1).indices, 1.0)

    K, L = a @ a.T, b @ b.T
    mk, ml = mask(K), mask(L)
    s = lambda x, y, m: hsic_unbiased(m * x, m * y)  # noqa: E731
    dense = float(s(K, L, mk * ml) / (torch.sqrt(s(K, K, mk) * s(L, L, ml)) + 1e-6))
    assert cknna(a, b, k) == pytest.approx(dense, abs=1e-10)


def test_hsic_unbiased_matches_the_o_n3_formula():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 30, generator=g, dtype=torch.float64), torch.randn(30, 30, generator=g, dtype=torch.float64)
    kt, lt = x.clone().fill_diagonal_(0), y.clone().fill_diagonal_(0)
    m = 30
    direct = ((kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)) / (
        m * (m - 3)
    )
    assert float(hsic_unbiased(x, y)) == pytest.approx(float(direct), rel=1e-12)


def test_cknna_properties():
    a, b = _pair()
    assert all_metrics(a, a)["cknna"] == pytest.approx(1.0, abs=1e-3)  # below 1 only by the official +1e-6
    base = all_metrics(a, b)["cknna"]
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(3))
    assert all_metrics(a[perm], b[perm])["cknna"] == pytest.approx(base, abs=1e-7)  # same permutation on both sides
    assert all_metrics(a * 7.5, b * 0.01)["cknna"] == pytest.approx(base, abs=1e-7)  # feature scaling
    shuffled = all_metrics(a, b[perm])["cknna"]
    assert abs(shuffled) < base / 3  # breaking the pairing destroys the alignment


def test_clipping_uses_the_exact_95th_percentile():
    x = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10) * torch.tensor([1.0, -1.0]).repeat(5)
    clipped = clip_outliers(x)
    assert clipped.abs().max() == 96.0  # sorted |x| at index floor(0.95 * 100) = 95 -> value 96


def test_errors():
    a, b = _pair()
    with pytest.raises(ValueError, match="pair rows"):
        cknna(a, b[:-1])
    with pytest.raises(ValueError, match="topk"):
        cknna(a, b, topk=1)


def test_align_commands(tmp_path, synthetic_dir, capsys):
    from vfmvae.cli import main

    a, b = _pair(60)
    save_file({"features": a}, tmp_path / "a.safetensors")
    torch.save({"features": b, "names": [f"{i}.png" for i in range(60)]}, tmp_path / "b.pt")
    assert (
        main(
            [
                "align",
                "metric",
                "--a",
                str(tmp_path / "a.safetensors"),
                "--b",
                str(tmp_path / "b.pt"),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["cknna"] == pytest.approx(all_metrics(a, b)["cknna"]) and {"mutual_knn", "cka", "unbiased_cka"} <= set(
        res
    )

    assert (
        main(
            [
                "align",
                "transforms",
                "--images",
                str(synthetic_dir / "images"),
                "--out",
                str(tmp_path / "t"),
                "--size",
                "32",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["num_images"] == 64 and len(list((tmp_path / "t" / "noise_0.200").glob("*.png"))) == 64
    recs = manifest["images"]
    assert {r["rotation"] for r in recs} <= {0, 90, 180, 270} and {r["scale"] for r in recs} <= {0.25, 0.5, 0.75, 1.0}
    assert len({(r["rotation"], r["scale"]) for r in recs}) > 4  # per-image seeds give varied transforms
    again = tmp_path / "t2"
    main(["align", "transforms", "--images", str(synthetic_dir / "images"), "--out", str(again), "--size", "32"])
    assert (again / "noise_0.100" / "000005.png").read_bytes() == (
        tmp_path / "t" / "noise_0.100" / "000005.png"
    ).read_bytes()

    (tmp_path / "cfg.yaml").write_text(
        f"images: {tmp_path / 't'}\nout: {tmp_path / 'report'}\nreference: vfm:dinov2-test\n"
        "models: [vfm:siglip2-test]\ntransformations: [clean, equivariance, noise_0.100]\n"
    )
    assert main(["align", "report", "--config", str(tmp_path / "cfg.yaml")]) == 0
    report = json.loads((tmp_path / "report" / "se_cknna.json").read_text())
    assert report["table"]["vfm:dinov2-test"]["clean"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < report["table"]["vfm:siglip2-test"]["noise_0.100"] < 1
    assert (tmp_path / "report" / "se_cknna.png").stat().st_size > 5000
    assert (
        main(
            [
                "align",
                "extract",
                "--source",
                "diffusion:x@3",
                "--images",
                str(tmp_path / "t"),
                "--out",
                str(tmp_path / "d.safetensors"),
            ]
        )
        == 2
    )
    assert "folder not found: x" in capsys.readouterr().err
