"""Reconstruction and generation metrics computed with the conventions behind the paper's numbers
(tianciB/VFM-VAE@b3a752a README + tools/reconstruct/evaluate.py: torch-fidelity 0.4.0, torchmetrics SSIM on [-1, 1])."""

import json

import numpy as np
import pytest
import torch

from vfmvae.evaluation import inception_score
from vfmvae.evaluation.image_metrics import psnr, ssim, ssim_signed
from vfmvae.evaluation.stats import inception_score_torch_fidelity


def _grouped_logits(n_per_class=20, classes=10, margin=10.0, seed=0):
    """Logits sorted by class (like a folder whose file names group similar images)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    logits = torch.randn(len(labels), 1008, generator=g)
    logits[torch.arange(len(labels)), labels] += margin
    return logits


# ---------------------------------------------------------------------------------------------- rIS
def test_ris_equals_torch_fidelity_isc_on_class_sorted_logits():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = _grouped_logits()
    ours = inception_score_torch_fidelity(logits)
    theirs = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    assert ours[0] == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert ours[1] == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    # splitting in file order (the old rIS rule) collapses on this class-sorted order: each split holds 1 class
    in_file_order = isc_features_to_metric(logits, splits=10, shuffle=False)["inception_score_mean"]
    assert in_file_order < 0.5 * ours[0]
    # N not divisible by the splits: torch-fidelity's chunk bounds i * N // splits
    odd = logits[:197]
    assert inception_score_torch_fidelity(odd)[0] == pytest.approx(
        isc_features_to_metric(odd, 10, True, 2020)["inception_score_mean"], rel=1e-12
    )


def test_inception_scores_are_finite_for_peaked_logits():
    from torch_fidelity.metric_isc import isc_features_to_metric

    # margin 200: float32 softmax underflows (ADM's float math gives 0 * log 0 = NaN); float64 does not
    peaked = _grouped_logits(margin=200.0)
    adm = inception_score(peaked)
    assert np.isfinite(adm) and adm == pytest.approx(10.0, rel=1e-6)  # one-hot, 10 classes, one split
    ours = inception_score_torch_fidelity(peaked)
    assert ours[0] == pytest.approx(isc_features_to_metric(peaked, 10, True, 2020)["inception_score_mean"], rel=1e-12)
    # margin 2000: even float64 underflows; torch-fidelity returns NaN, ours takes the limit 0 log 0 = 0
    extreme = torch.full((100, 1008), -1000.0)
    extreme[torch.arange(100), torch.arange(100) % 10] = 1000.0
    assert np.isnan(isc_features_to_metric(extreme, 10, True, 2020)["inception_score_mean"])
    value, _ = inception_score_torch_fidelity(extreme)
    shuffled = extreme[torch.from_numpy(np.random.RandomState(2020).permutation(100))]
    # IS of one-hot predictions = exp(entropy of the class frequencies) per split
    freqs = [np.bincount(torch.argmax(shuffled[i * 10 : (i + 1) * 10], 1).numpy()) / 10 for i in range(10)]
    expected = np.mean([np.exp(-sum(f * np.log(f) for f in q if f > 0)) for q in freqs])
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-9)
    assert inception_score(extreme) == pytest.approx(10.0, rel=1e-6)  # float32, as ADM


# ---------------------------------------------------------------------------------------------- SSIM / PSNR
def test_ssim_signed_equals_torchmetrics_data_range_2_on_signed_images():
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (4, 3, 40, 48), generator=g, dtype=torch.uint8)
    a[0] = 128 + torch.randint(-3, 4, a[0].shape, generator=g).to(torch.uint8)  # near mid-grey
    b = (a.int() + torch.randint(-20, 21, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    to_signed = lambda t: (t.float() / 255.0 - 0.5) / 0.5  # noqa: E731  (official evaluate.py)
    ours = ssim_signed(b, a)
    for i in range(4):
        metric = StructuralSimilarityIndexMeasure(data_range=2.0)
        assert float(ours[i]) == pytest.approx(
            float(metric(to_signed(b[i : i + 1]), to_signed(a[i : i + 1]))), abs=1e-4
        )
    batch = StructuralSimilarityIndexMeasure(data_range=2.0)(to_signed(b), to_signed(a))
    assert float(ours.mean()) == pytest.approx(float(batch), abs=1e-4)
    # PSNR per image with data range 2 on [-1, 1] equals our uint8 PSNR
    for i in range(4):
        tm = PeakSignalNoiseRatio(data_range=2.0)(to_signed(b[i : i + 1]), to_signed(a[i : i + 1]))
        assert float(psnr(b[i : i + 1], a[i : i + 1])) == pytest.approx(float(tm), abs=1e-4)
    # the two SSIM conventions differ a lot near mid-grey (so the choice matters)
    assert float(ssim(b[:1], a[:1])) - float(ours[0]) > 0.05


# ---------------------------------------------------------------------------------------------- eval recon
class _CheapFeatures(torch.nn.Module):
    """A cheap, seeded stand-in for the Inception (pool features + unbiased logits 1008) that both torch-fidelity's
    pipeline and ours run. The Inception itself equals torch-fidelity's to 1e-5 (test_evaluation.py::
    test_inception_features_and_fid_match_torch_fidelity); 2 x 0.5 s per image on CPU is too slow here."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, 64, generator=g) / 8)  # 64-d: keeps sqrtm cheap
        self.register_buffer("fc", torch.randn(64, 1008, generator=g))

    def features(self, images):
        v = torch.nn.functional.adaptive_avg_pool2d(images.float() / 127.5 - 1, 8).flatten(1)
        pool = torch.relu(v @ self.proj)
        return pool, pool @ self.fc


def _register_cheap_extractor_in_torch_fidelity():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class CheapExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = _CheapFeatures()

        @staticmethod
        def get_provided_features_list():
            return "2048", "logits_unbiased"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased", "fid": "2048"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, x):
            pool, logits = self.net.features(x)
            return tuple({"2048": pool, "logits_unbiased": logits}[k] for k in self.features_list)

    if "vfmvae-test-cheap" not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor("vfmvae-test-cheap", CheapExtractor)


class _OursCheap(_CheapFeatures):
    def forward(self, images):
        pool, logits = self.features(images)
        return {"pool": pool, "spatial": pool[:, :8], "logits": logits}


def _grouped_folders(root, groups=5, per_group=8, size=32):
    """Originals and reconstructions whose sorted file names group near-identical images (and where '-' sorts
    before '.', so path order and stem order differ)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ref, rec = root / "inputs", root / "outputs"
    ref.mkdir()
    rec.mkdir()
    for k in range(groups):
        base = rng.integers(0, 256, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        for i in range(per_group):
            img = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
            out = np.clip(img.astype(int) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)
            name = f"g{k}" if i == 0 else f"g{k}-{i:02d}"
            Image.fromarray(img).save(ref / f"{name}.png")
            Image.fromarray(out).save(rec / f"{name}.png")
    return ref, rec


def test_eval_recon_equals_torch_fidelity_pipeline_and_official_pixel_metrics(tmp_path, monkeypatch):
    """`vfmvae eval recon` vs torch-fidelity's own pipeline (`calculate_metrics`, as `fidelity --fid --isc --input1
    RECON --input2 ORIGINALS`: its file listing, order, shuffle, FID and ISC) on a class-sorted folder, both with the
    same feature network; SSIM/PSNR vs torchmetrics on [-1, 1] with data range 2."""
    import torch_fidelity
    from PIL import Image
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    import vfmvae.evaluation.reconstruction as recon
    from vfmvae.cli import main

    _register_cheap_extractor_in_torch_fidelity()
    monkeypatch.setattr(recon, "load_inception", lambda weights, device: (_OursCheap().to(device), {}))
    ref, rec = _grouped_folders(tmp_path)
    assert (
        main(
            [
                "eval",
                "recon",
                "--reference",
                str(ref),
                "--reconstructions",
                str(rec),
                "--inception",
                "cheap",
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    ours = json.loads((tmp_path / "r.json").read_text())
    theirs = torch_fidelity.calculate_metrics(
        input1=str(rec),
        input2=str(ref),
        cuda=False,
        fid=True,
        isc=True,
        feature_extractor="vfmvae-test-cheap",
        verbose=False,
        cache=False,
    )
    assert ours["rfid"] > 0 and ours["rfid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert ours["ris"] == pytest.approx(theirs["inception_score_mean"], rel=1e-3)
    assert ours["ris_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-3, abs=1e-6)
    # the folder is class-sorted: splitting in file order (the old rule) gives a much lower score
    files = sorted(str(p) for p in rec.glob("*.png"))
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1) for p in files])
    _, logits = _OursCheap().features(images)
    from torch_fidelity.metric_isc import isc_features_to_metric

    assert isc_features_to_metric(logits, 10, shuffle=False)["inception_score_mean"] < 0.8 * ours["ris"]

    def load(folder):
        return torch.stack(
            [torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1) for p in sorted(folder.glob("*.png"))]
        )

    a, b = load(ref), load(rec)
    signed = lambda t: (t.float() / 255 - 0.5) / 0.5  # noqa: E731
    tm_ssim = np.mean(
        [
            float(StructuralSimilarityIndexMeasure(data_range=2.0)(signed(b[i : i + 1]), signed(a[i : i + 1])))
            for i in range(len(a))
        ]
    )
    tm_psnr = np.mean(
        [float(PeakSignalNoiseRatio(data_range=2.0)(signed(b[i : i + 1]), signed(a[i : i + 1]))) for i in range(len(a))]
    )
    assert ours["ssim"] == pytest.approx(tm_ssim, abs=1e-4)
    assert ours["psnr"] == pytest.approx(tm_psnr, abs=1e-4)
    assert ours["ssim_uint8"] != pytest.approx(ours["ssim"], abs=1e-3)
    assert "RandomState(2020)" in ours["protocol"]["ris"] and "data_range=2.0" in ours["protocol"]["ssim"]


@pytest.mark.slow
def test_eval_recon_with_a_tokenizer_decodes_a_posterior_sample_by_default(tmp_path, synthetic_dir):
    """As tools/reconstruct/reconstruct.py (z is sampled); --mode decodes the posterior mean."""
    from pathlib import Path

    from PIL import Image

    from vfmvae.cli import main
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    tiny = Path(__file__).parent / "data" / "official_tokenizer_tiny"
    convert_official_tokenizer(
        tiny / "config.yaml", tiny / "official_G.safetensors", tiny / "siglip2-tiny-patch16", tmp_path / "tok"
    )
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted((synthetic_dir / "images").rglob("*.png"))[:3]:
        Image.open(p).save(data / p.name)
    outs = {}
    for name, extra in (("sample", []), ("mode", ["--mode"])):
        assert (
            main(
                [
                    "eval",
                    "recon",
                    "--tokenizer",
                    str(tmp_path / "tok"),
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / name),
                    "--device",
                    "cpu",
                    "--json",
                    str(tmp_path / f"{name}.json"),
                ]
                + extra
            )
            == 0
        )
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outs["sample"]["protocol"]["latent"] == "posterior sample (seed 0)"
    assert outs["mode"]["protocol"]["latent"] == "posterior mean"
    a = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "sample" / "images").glob("*.png"))]
    b = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "mode" / "images").glob("*.png"))]
    assert len(a) == 3 and any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_reconstruction_inputs_are_the_official_resize_and_centre_crop():
    """tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py: Resize(256) + CenterCrop(256) on the PIL image; the
    ADM crop (box downsampling, bicubic, floor-centred) gives other pixels on a non-square image."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from vfmvae.data.transforms import crop_image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (301, 517, 3), dtype=np.uint8))
    official = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64)])(img)
    ours = crop_image(img, 64, "resize_center")
    assert np.array_equal(np.asarray(ours), np.asarray(official))
    assert not np.array_equal(np.asarray(crop_image(img, 64, "adm_center")), np.asarray(official))


def test_reconstructions_are_saved_as_to_pil_image_truncates():
    import numpy as np
    import torch
    from torchvision.transforms.functional import to_pil_image

    from vfmvae.tokenizer.reconstruct import to_uint8_from_signed

    x = torch.rand(2, 3, 8, 8) * 2.2 - 1.1  # a decoder's output, a little out of range
    official = np.stack([np.asarray(to_pil_image(((im + 1) / 2).clamp(0, 1))) for im in x])
    assert np.array_equal(to_uint8_from_signed(x).permute(0, 2, 3, 1).numpy(), official)
