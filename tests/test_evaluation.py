"""Evaluation: closed forms, constructed cases, and parity with torch-fidelity and torchmetrics."""

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from vfmvae.evaluation import (
    InceptionV3,
    LPIPSMetric,
    frechet_distance,
    gaussian_stats,
    inception_score,
    precision_recall,
    psnr,
    ssim,
)


def _spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + np.eye(d) * 0.1


# ---------------------------------------------------------------------------------------------- Fréchet
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2, s = rng.normal(size=d), rng.normal(size=d), _spd(d, rng)
    assert abs(frechet_distance(mu1, s, mu1, s)) < 1e-9
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-6)
    d1, d2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-6)
    q = ortho_group.rvs(d, random_state=1)
    rotated = frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-6)
    s1, s2 = _spd(d, rng), _spd(d, rng)
    a, b = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    eig = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real)
    )
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(eig, rel=1e-6)


def test_statistics_are_float64_and_rank_deficient_fid_is_finite():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 128)) + 1e3).astype(np.float32)  # large offset: float32 accumulators would fail
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    y = (rng.normal(size=(64, 128)) + 1e3).astype(np.float32)
    assert np.isfinite(frechet_distance(mu, sigma, *gaussian_stats(y)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(x[:1])


def _exact_fid(x1, x2):
    """FID of two feature sets without a matrix square root: the non-zero eigenvalues of S1 S2 are the squared
    singular values of C1 C2^T / sqrt((n1 - 1)(n2 - 1)) (C: centred features), so tr sqrtm(S1 S2) is that small
    matrix's nuclear norm (scipy's SVD, exact also where the covariances are singular)."""
    from scipy import linalg

    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    nuclear = linalg.svdvals(c1 @ c2.T).sum() / np.sqrt((len(x1) - 1) * (len(x2) - 1))
    (m1, s1), (m2, s2) = gaussian_stats(x1), gaussian_stats(x2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)


def test_fid_is_exact_finite_and_warned_on_singular_covariances():
    """Fewer samples than dimensions (rank N - 1), dead features, constant features: ADM's sqrtm of the product
    returned -1.4e-5 for identical statistics and stopped with "imaginary component 0.139" for features of scale
    1e3; the value must be the exact one, a float >= 0, with a warning that it is not comparable."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 128))
    dead = np.zeros((10, 128))
    dead[:, :5] = rng.normal(size=(10, 5))
    basis = rng.normal(size=(8, 128))
    low_a, low_b = (np.maximum(rng.normal(size=(12, 8)) @ basis, 0) for _ in range(2))
    cases = {
        "identical": (x, x),
        "scale 1e3": (1e3 * x, 1e3 * x + 1),
        "dead features": (dead, dead + 1e-3 * rng.normal(size=dead.shape)),
        "constant against random": (np.ones((10, 128)), x),
        "low-rank ReLU": (low_a, low_b),
        "low-rank ReLU, identical": (low_a, low_a),
    }
    for name, (a, b) in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
        assert type(value) is float and np.isfinite(value) and value >= 0, name
        assert value == pytest.approx(max(_exact_fid(a, b), 0.0), rel=1e-8, abs=1e-8), name
        assert any("singular covariance" in str(w.message) for w in caught), name


def test_fid_equals_the_adm_sqrtm_and_torch_fidelity_on_well_conditioned_statistics(recwarn):
    import scipy.linalg
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(1)
    x1 = rng.normal(size=(600, 32)) @ rng.normal(size=(32, 32))
    x2 = 1.3 * rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32)) + 0.2
    (mu1, s1), (mu2, s2) = gaussian_stats(x1), gaussian_stats(x2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    adm = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    fidelity = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert ours == pytest.approx(adm, rel=1e-10)
    assert ours == pytest.approx(fidelity["frechet_inception_distance"], rel=1e-10)
    assert ours == pytest.approx(_exact_fid(x1, x2), rel=1e-10)
    assert not [w for w in recwarn if "FID" in str(w.message)]  # full rank: nothing to warn about


def test_fid_refuses_non_finite_statistics_and_warns_on_a_matrix_that_is_no_covariance():
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(np.zeros(3), np.eye(3), np.array([0.0, np.nan, 0.0]), np.eye(3))
    with pytest.warns(UserWarning, match="not positive semi-definite"):
        value = frechet_distance(np.zeros(2), np.diag([1.0, -0.5]), np.zeros(2), np.eye(2))
    # traces as given (0.5 + 2), the root term without the negative direction: 2 * (sqrt(1 * 1) + 0)
    assert value == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------------------------------- IS, P/R
def test_inception_score_constructed_cases():
    logits = torch.zeros(100, 10)
    assert inception_score(logits) == pytest.approx(1.0)
    one_hot = torch.full((100, 10), -20.0)  # large margins, yet no exact zeros (0 log 0 is nan, as in ADM)
    one_hot[torch.arange(100), torch.arange(100) % 10] = 20.0
    assert inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)
    # consecutive splits without shuffle: a class-sorted file scores lower (ADM's pitfall)
    sorted_logits = one_hot[torch.argsort(torch.arange(100) % 10, stable=True)]
    assert inception_score(sorted_logits, split_size=10) == pytest.approx(1.0, rel=1e-6)
    assert inception_score(one_hot, split_size=10) == pytest.approx(10.0, rel=1e-6)


def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 8)).astype(np.float32)
    assert precision_recall(ref, ref) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)
    subset = ref[ref[:, 0] > 0.8]  # samples cover only one side of the reference support
    p, r = precision_recall(ref, subset)
    assert p == 1.0 and r < 0.8
    smp = rng.normal(size=(150, 8)).astype(np.float32) * 1.3
    blocked = precision_recall(ref, smp, block=37, fp16=False)
    brute = precision_recall(ref, smp, block=10000, fp16=False)
    assert blocked == brute
    d = ((smp[:, None] - ref[None]) ** 2).sum(-1)
    rr = np.sort(((ref[:, None] - ref[None]) ** 2).sum(-1), 1)[:, 3]
    rs = np.sort(((smp[:, None] - smp[None]) ** 2).sum(-1), 1)[:, 3]
    assert brute[0] == pytest.approx(np.mean((d <= rr[None]).any(1)), abs=1e-12)
    assert brute[1] == pytest.approx(np.mean((d <= rs[:, None]).any(0)), abs=1e-12)
    fp16 = precision_recall(ref, smp)
    assert abs(fp16[0] - brute[0]) < 0.03 and abs(fp16[1] - brute[1]) < 0.03
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(ref[:3], smp)


# ---------------------------------------------------------------------------------------------- Inception
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Seeded random weights with torch-fidelity's keys, scaled so activations stay O(1) (He init, unit BN)."""
    net = InceptionV3()
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in net.net.state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.running_var"):
            state[key] = torch.ones_like(value)
        elif key.endswith("bn.running_mean") or key.endswith("bn.bias"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("bn.weight"):
            state[key] = torch.ones_like(value)
        elif value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=g) * 0.02
        else:
            state[key] = value
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(state, path)
    return path


def _images(n, seed, size=64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, 3, size // 8, size // 8), generator=g, dtype=torch.uint8)
    return torch.nn.functional.interpolate(base.float(), size=size, mode="nearest").to(torch.uint8)


def test_inception_features_and_fid_match_torch_fidelity(inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from vfmvae.evaluation import load_inception

    ours, provenance = load_inception(inception_weights)
    theirs = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(inception_weights)
    ).eval()
    a, b = _images(12, 0), _images(12, 1)
    fa, fb = ours(a), ours(b)
    with torch.no_grad():
        ta, la = theirs(a)
        tb, _ = theirs(b)
    assert fa["pool"].shape == (12, 2048) and fa["spatial"].shape == (12, 2023) and fa["logits"].shape == (12, 1008)
    assert fa["pool"].std() > 1e-2  # meaningful activations, not vanishing
    torch.testing.assert_close(fa["pool"], ta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fa["logits"], la, rtol=1e-4, atol=1e-4)
    ours_fid = frechet_distance(*gaussian_stats(fa["pool"]), *gaussian_stats(fb["pool"]))
    theirs_fid = fid_statistics_to_metric(
        fid_features_to_statistics(ta.double()), fid_features_to_statistics(tb.double()), False
    )["frechet_inception_distance"]
    assert ours_fid > 0 and ours_fid == pytest.approx(theirs_fid, rel=1e-3)
    assert len(provenance["inception_sha256"]) == 64
    # batch-size independence
    half = torch.cat([ours(a[:5])["pool"], ours(a[5:])["pool"]])
    torch.testing.assert_close(half, fa["pool"], rtol=1e-5, atol=1e-5)


def test_sfid_feature_is_mixed_6d_branch1x1_first_7_channels_nhwc():
    net = InceptionV3()
    c, h, w = torch.meshgrid(torch.arange(192), torch.arange(17), torch.arange(17), indexing="ij")
    code = (c * 10000 + h * 100 + w).float()[None]
    net._keep_spatial(net.net.Mixed_6d.branch1x1, None, code)
    flat = net._spatial[0]
    for hh, ww, cc in [(0, 0, 0), (3, 5, 6), (16, 16, 2)]:
        assert flat[(hh * 17 + ww) * 7 + cc] == cc * 10000 + hh * 100 + ww
    assert flat.numel() == 2023


# ---------------------------------------------------------------------------------------------- pixels
def test_psnr_and_ssim_equal_torchmetrics_per_image():
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 3, 40, 48), generator=g, dtype=torch.uint8)
    noise = torch.randint(-20, 21, a.shape, generator=g)
    b = (a.int() + noise).clamp(0, 255).to(torch.uint8)
    ours_p, ours_s = psnr(a, b), ssim(a, b)
    for i in range(3):
        tm_p = peak_signal_noise_ratio(b[i : i + 1].double(), a[i : i + 1].double(), data_range=255.0)
        tm_s = structural_similarity_index_measure(b[i : i + 1].double(), a[i : i + 1].double(), data_range=255.0)
        assert float(ours_p[i]) == pytest.approx(float(tm_p), rel=1e-6)
        assert float(ours_s[i]) == pytest.approx(float(tm_s), rel=1e-6)
    c = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    assert float(psnr(c, c + 5)) == pytest.approx(10 * np.log10(255**2 / 25))
    assert float(ssim(a, a).min()) == pytest.approx(1.0)
    # the mean of per-image PSNRs is not the PSNR of the pooled MSE
    pooled = 10 * torch.log10(255.0**2 / (a.double() - b.double()).square().mean())
    assert abs(float(ours_p.mean()) - float(pooled)) > 1e-6


def test_lpips_with_local_vgg_weights_matches_lpips_package():
    import lpips
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16().features.state_dict()
    trunk = {f"features.{k}": v for k, v in features.items()}
    ours = LPIPSMetric(trunk)
    reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    reference.net.load_state_dict(ours.net.net.state_dict())
    a, b = _images(2, 3, 32), _images(2, 4, 32)
    d = ours(a, b)
    with torch.no_grad():
        expected = reference(a.float() / 127.5 - 1, b.float() / 127.5 - 1).flatten()
    torch.testing.assert_close(d, expected)
    assert torch.all(ours(a, a).abs() < 1e-6) and torch.allclose(ours(b, a), d) and torch.all(d > 0)
    # per image: the same values one image at a time (eval mode: the heads' dropout is off)
    torch.testing.assert_close(torch.cat([ours(a[:1], b[:1]), ours(a[1:], b[1:])]), d, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- commands
def test_eval_commands_end_to_end(tmp_path, inception_weights, synthetic_dir, capsys):
    from PIL import Image

    from vfmvae.cli import main

    images = sorted((synthetic_dir / "images").rglob("*.png"))
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images[:10]])
    np.savez(tmp_path / "samples.npz", arr_0=arr, arr_1=np.zeros(10, np.int64))
    ref_dir = tmp_path / "ref_images"
    ref_dir.mkdir()
    for i, p in enumerate(images[20:32]):
        Image.open(p).save(ref_dir / f"{i:03d}.png")
    assert (
        main(
            [
                "eval",
                "ref-stats",
                "--images",
                str(ref_dir),
                "--out",
                str(tmp_path / "ref.npz"),
                "--inception",
                str(inception_weights),
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    ref = np.load(tmp_path / "ref.npz")
    assert set(ref.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s"} and ref["mu_s"].shape == (2023,)
    assert (
        main(
            [
                "eval",
                "gen",
                "--samples",
                str(tmp_path / "samples.npz"),
                "--ref",
                str(tmp_path / "ref.npz"),
                "--inception",
                str(inception_weights),
                "--json",
                str(tmp_path / "gen.json"),
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "gen.json").read_text())
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(res[key]), key
    assert res["fid"] > 0 and 0 <= res["precision"] <= 1 and res["protocol"]["num_samples"] == 10
    assert res["protocol"]["inception_sha256"] and "FID" in capsys.readouterr().out

    # recon: identical folders give infinite PSNR-free metrics: SSIM 1, LPIPS skipped without weights
    assert (
        main(
            [
                "eval",
                "recon",
                "--reference",
                str(ref_dir),
                "--reconstructions",
                str(ref_dir),
                "--json",
                str(tmp_path / "recon.json"),
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "recon.json").read_text())
    assert rec["ssim"] == pytest.approx(1.0) and rec["lpips"] is None and rec["rfid"] is None
    assert any("lpips" in s for s in rec["protocol"]["skipped"])


def test_eval_errors_are_clear(tmp_path, capsys):
    from PIL import Image

    from vfmvae.cli import main

    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (48, 32)).save(tmp_path / "mixed" / "b.png")
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048), mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    assert (
        main(
            [
                "eval",
                "gen",
                "--samples",
                str(tmp_path / "mixed"),
                "--ref",
                str(tmp_path / "ref.npz"),
                "--inception",
                str(tmp_path / "missing.pth"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "missing.pth" in err
    from vfmvae.evaluation.images import open_image_set

    with pytest.raises(ValueError, match="mixed image sizes"):
        list(open_image_set(tmp_path / "mixed").batches(8))
