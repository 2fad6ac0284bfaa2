"""SE-CKNNA as the paper defines it and the official extractors feed the models (tianciB/VFM-VAE@b3a752a
tools/evaluate_alignment): same-T(x) pairing, mean over transformations, DINOv2 input at 224 px, posterior samples."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vfmvae.alignment import cknna
from vfmvae.alignment.extract import dinov2_input, load_source
from vfmvae.alignment.metrics import preprocess
from vfmvae.alignment.report import se_cknna_table

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------- pairing
def test_same_pairing_differs_from_clean_reference_pairing_on_a_constructed_case():
    """The model is an exact isometry of the reference under every T, and T moves the reference a lot: pairing on
    the same T(x) gives ~1 everywhere; pairing with the clean reference falls under the strong transformation."""
    g = torch.Generator().manual_seed(0)
    n, d = 200, 32
    clean = torch.randn(n, d, generator=g)
    ref = {
        "clean": clean,
        "noise_0.050": clean + 0.1 * torch.randn(n, d, generator=g),
        "noise_0.200": torch.randn(n, d, generator=g),
    }  # the neighbourhoods are scrambled
    # a signed permutation of the coordinates: an isometry that the official clipping (95th percentile of |x|) keeps
    q = torch.eye(d)[torch.randperm(d, generator=g)] * torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    model = {t: x @ q for t, x in ref.items()}
    ref_p = {t: preprocess(x) for t, x in ref.items()}
    model_p = {"m": {t: preprocess(x) for t, x in model.items()}}

    same, se_same = se_cknna_table(ref_p, model_p, topk=10, pairing="same")
    clean_ref, se_clean = se_cknna_table(ref_p, model_p, topk=10, pairing="clean-reference")
    for t in ref:
        assert same["m"][t] == pytest.approx(cknna(ref_p[t], model_p["m"][t], 10), abs=1e-9)
        assert clean_ref["m"][t] == pytest.approx(cknna(ref_p["clean"], model_p["m"][t], 10), abs=1e-9)
        assert same["m"][t] > 0.99
    assert clean_ref["m"]["noise_0.200"] < 0.3 and clean_ref["m"]["clean"] == pytest.approx(same["m"]["clean"])
    # SE-CKNNA: the plain mean over the transformations other than clean
    assert se_same["m"] == pytest.approx((same["m"]["noise_0.050"] + same["m"]["noise_0.200"]) / 2)
    assert se_clean["m"] == pytest.approx((clean_ref["m"]["noise_0.050"] + clean_ref["m"]["noise_0.200"]) / 2)
    assert se_same["m"] - se_clean["m"] > 0.3
    with pytest.raises(ValueError, match="pairing"):
        se_cknna_table(ref_p, model_p, pairing="clean")


def test_align_report_pairs_the_reference_on_the_same_transformed_images(tmp_path, synthetic_dir):
    from vfmvae.alignment import AlignReportConfig, make_transformed_set, run_report

    images = tmp_path / "few"
    images.mkdir()
    for p in sorted((synthetic_dir / "images").rglob("*.png"))[:16]:
        Image.open(p).save(images / p.name)
    make_transformed_set(images, tmp_path / "t", size=32, progress=False)
    common = dict(
        images=tmp_path / "t",
        reference="vfm:dinov2-test",
        models=("vfm:siglip2-test",),
        transformations=("clean", "noise_0.200"),
        topk=5,
    )
    old = run_report(AlignReportConfig(out=tmp_path / "r", pairing="clean-reference", **common))
    same = run_report(AlignReportConfig(out=tmp_path / "r", **common))  # the same cached features, paired anew
    # the reference against itself: 1 on the same images, below 1 against its clean features
    assert same["table"]["vfm:dinov2-test"]["noise_0.200"] == pytest.approx(1.0, abs=1e-3)
    assert old["table"]["vfm:dinov2-test"]["noise_0.200"] < 0.99
    m = "vfm:siglip2-test"
    assert same["table"][m]["noise_0.200"] != pytest.approx(old["table"][m]["noise_0.200"], abs=1e-4)
    assert same["se_cknna"][m] == pytest.approx(same["table"][m]["noise_0.200"])
    saved = json.loads((tmp_path / "r" / "se_cknna.json").read_text())
    assert saved["protocol"]["pairing"] == "same" and saved["protocol"]["se_cknna_over"] == ["noise_0.200"]
    assert "SE-CKNNA" in (tmp_path / "r" / "se_cknna.md").read_text()


# ---------------------------------------------------------------------------------------------- DINOv2 input
@pytest.fixture(scope="module")
def dinov2_patch14(tmp_path_factory):
    """A tiny random DINOv2 (the real class) with the real patch size 14, saved as a local transformers folder."""
    from vfmvae.vfm.families import VFM_ADAPTERS

    torch.manual_seed(0)
    model = VFM_ADAPTERS["dinov2"].build(
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=14,
            image_size=518,
            layerscale_value=1.0,
        )
    )
    folder = tmp_path_factory.mktemp("dinov2") / "dinov2-p14"
    model.save_pretrained(folder)
    return folder


def _image(size=256, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 16, size // 16, 3)).repeat(16, 0).repeat(16, 1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def _timm_positions_forward(model, pixels: torch.Tensor) -> torch.Tensor:
    """The official extractor's timm ViT (dynamic_img_size=True): the table resampled to the input's (square) grid by
    timm's `resample_abs_pos_embed`, then the model as it is; patch tokens after the final norm."""
    import copy

    from timm.layers import resample_abs_pos_embed

    twin = copy.deepcopy(model)
    grid = pixels.shape[-1] // twin.config.patch_size
    table = twin.embeddings.position_embeddings
    table.data = resample_abs_pos_embed(table.data, [grid, grid], num_prefix_tokens=1)
    return twin(pixel_values=pixels).last_hidden_state[:, 1:]


def test_dinov2_reference_takes_the_official_224px_input_at_256px(dinov2_patch14):
    from torchvision import transforms

    from vfmvae.vfm import VFMSpec, build_vfm

    model, features = load_source(f"vfm:{dinov2_patch14}")
    vfm = build_vfm(VFMSpec.from_name(dinov2_patch14, layers=(-1,), scale_factor=1.0))
    arr = _image()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    with pytest.raises(ValueError, match="multiple of the patch size"):  # 256 px straight into a patch-14 model
        vfm(x)
    # clean/noise: the official transform (Resize(224, BICUBIC) on PIL, ToTensor, ImageNet Normalize)
    official = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    pixels = official(Image.fromarray(arr))[None]
    expected = _timm_positions_forward(vfm.model, pixels).mean(1)
    torch.testing.assert_close(features(x, 1.0, False, 0), expected, rtol=1e-4, atol=1e-5)
    # equivariance: rot90, bilinear (no antialias) to int(224 s), reflect pad to a multiple of 14, Normalize
    rotated = torch.rot90(x, k=3, dims=(-2, -1))
    for scale in (1.0, 0.75, 0.5, 0.25):
        y = F.interpolate(rotated, size=int(224 * scale), mode="bilinear", align_corners=False)
        norm = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        expected = _timm_positions_forward(vfm.model, norm(y[0])[None]).mean(1)
        torch.testing.assert_close(features(rotated, scale, True, 0), expected, rtol=1e-4, atol=1e-5)


def test_dinov2_input_reflect_pads_right_and_bottom_to_the_patch_multiple():
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    y = dinov2_input(x, 0.3, True, patch_size=14)  # int(224 * 0.3) = 67 -> 70
    assert y.shape[-2:] == (70, 70)
    core = F.interpolate(x, size=67, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y[..., :67, :67], core)
    torch.testing.assert_close(y[..., 67:, :67], core[..., [65, 64, 63], :])  # reflect (edge not repeated)
    torch.testing.assert_close(y[..., :67, 67:], core[..., :, [65, 64, 63]])


# ---------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    tiny = DATA / "official_tokenizer_tiny"
    out = tmp_path_factory.mktemp("tok") / "tok"
    convert_official_tokenizer(
        tiny / "config.yaml", tiny / "official_G.safetensors", tiny / "siglip2-tiny-patch16", out
    )
    return out


def test_tokenizer_features_are_a_seeded_posterior_sample(tiny_tokenizer):
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.posterior import DiagonalGaussian

    tok = VFMVAE.from_pretrained(tiny_tokenizer)
    size = tok.config.image_size
    x = torch.from_numpy(_image(size, 1)).permute(2, 0, 1)[None].float() / 255
    _, sample = load_source(f"tokenizer:{tiny_tokenizer}")
    _, mean = load_source(f"tokenizer:{tiny_tokenizer}", posterior="mean")
    with torch.no_grad():
        dist = DiagonalGaussian(tok.encode_moments(x).moments)
        expected = dist.sample(torch.Generator().manual_seed(7)).mean((2, 3))
        torch.testing.assert_close(sample(x, 1.0, False, 7), expected)
        torch.testing.assert_close(mean(x, 1.0, False, 7), dist.mode().mean((2, 3)))
        assert not torch.allclose(sample(x, 1.0, False, 7), sample(x, 1.0, False, 8))
    with pytest.raises(ValueError, match="posterior"):
        load_source(f"tokenizer:{tiny_tokenizer}", posterior="mode")


# ---------------------------------------------------------------------------------------------- REG diffusion
def test_reg_diffusion_features_use_the_noised_real_class_token_and_proj_keeps_it(tmp_path, tiny_tokenizer):
    """As get_block_features_from_reg.py: the image's DINOv2 class token (the VFM of the model's latent cache),
    noised to t = 0.5 like the latent; block features drop the class token, projector features keep it."""
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.latents.targets import reg_dinov2_targets
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.posterior import DiagonalGaussian
    from vfmvae.vfm import VFMSpec, build_vfm

    tok = VFMVAE.from_pretrained(tiny_tokenizer)
    size = tok.config.image_size
    torch.manual_seed(0)
    model = create_diffusion_model("reg-sit-tiny", in_channels=8, input_size=size // 16, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "dit")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.json").write_text(json.dumps({"vfm_features": "dinov2-test", "resolution": size}))
    (tmp_path / "dit" / "latent_stats.json").write_text(
        json.dumps(
            {"mean": [0.1] * 8, "std": [2.0] * 8, "tokenizer": str(tiny_tokenizer), "cache": str(tmp_path / "cache")}
        )
    )
    x = torch.from_numpy(_image(size, 2)).permute(2, 0, 1)[None].float() / 255

    def expected(block: str, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(index)
        with torch.no_grad():
            z = (DiagonalGaussian(tok.encode_moments(x).moments).sample(g) - 0.1) / 2.0
            noise = torch.randn(z.shape, generator=g)
            # the cache's target VFM: REG's table resampling (timm, antialiased cubic) at the cache's resolution
            target_vfm = reg_dinov2_targets(build_vfm(VFMSpec("dinov2-test", layers=(-1,))), size)
            cls = 0.5 * target_vfm(x).cls + 0.5 * torch.randn(1, 64, generator=g)
            out = model(0.5 * z + 0.5 * noise, torch.full((1,), 0.5), torch.tensor([4]), cls, hidden_at=(1,))
        return out.projected[0].mean(1) if block == "proj" else out.hidden[1][:, 1:].mean(1)

    for block in ("proj", "1"):
        _, features = load_source(f"diffusion:{tmp_path / 'dit'}@{block}")
        with torch.no_grad():
            got = features(x, 1.0, False, 3)
        torch.testing.assert_close(got, expected(block, 3), rtol=1e-5, atol=1e-6)
    (tmp_path / "cache" / "cache.json").unlink()
    with pytest.raises(FileNotFoundError, match="class token"):
        load_source(f"diffusion:{tmp_path / 'dit'}@1")
