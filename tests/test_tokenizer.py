"""VFMVAE: parity with the official implementation, API, persistence and conversion."""

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vfmvae.checkpoint import CheckpointFormatError
from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer.convert import convert_official_tokenizer, load_official_weights
from vfmvae.vfm import VFMSpec

DATA = Path(__file__).parent / "data" / "official_tokenizer_tiny"


@pytest.fixture(scope="module")
def official():
    model = convert_official_tokenizer(
        DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16"
    )
    return model, load_file(DATA / "reference_outputs.safetensors")


def test_encode_matches_the_official_implementation(official):
    model, ref = official
    with torch.no_grad():
        moments = model.encode_moments(ref["images"]).moments
        post = model.encode(ref["images"])
    torch.testing.assert_close(moments, ref["moments"], rtol=0, atol=1e-4)
    torch.testing.assert_close(post.mean, ref["posterior_mean"], rtol=0, atol=1e-4)
    torch.testing.assert_close(post.logvar, ref["posterior_logvar"], rtol=0, atol=1e-4)
    torch.manual_seed(5)  # the official sample is mean + std * randn under the global seed
    torch.testing.assert_close(post.sample(), ref["sample_seed5"], rtol=0, atol=1e-4)


def test_decode_and_multiscale_match_the_official_implementation(official):
    model, ref = official
    with torch.no_grad():
        decoded = model.decode(ref["z"])
        image, multiscale = decoded.sample, decoded.multiscale
        large = model.decode(ref["z_large"]).sample  # dynamic resolution: 8x8 latent -> 128 px
    torch.testing.assert_close(image, ref["decoded"], rtol=0, atol=1e-4)
    assert [m.shape[-1] for m in multiscale] == [32, 16, 8, 4, 2]  # largest first
    for i, m in enumerate(multiscale):
        torch.testing.assert_close(m, ref[f"multiscale_{i}"], rtol=0, atol=1e-4, msg=f"multiscale {i}")
    torch.testing.assert_close(large, ref["decoded_large"], rtol=0, atol=1e-4)
    assert image.abs().max() > 0.1  # the reference is not trivially zero


def test_posterior_api(official):
    model, ref = official
    post = model.encode(ref["images"])
    assert post.mean.shape == post.logvar.shape == post.std.shape == (2, 8, 4, 4)
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
    assert torch.equal(post.mode(), post.mean)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(post.sample(g1), post.sample(g2)) and not torch.equal(post.sample(), post.mean)
    kl = post.kl()
    expected = 0.5 * (post.mean**2 + post.logvar.exp() - 1 - post.logvar).sum((1, 2, 3))
    assert kl.shape == (2,) and torch.allclose(kl, expected)
    recon = model(ref["images"])
    torch.testing.assert_close(recon, model.decode(post.mean).sample)


def test_save_and_load_round_trip(official, tmp_path):
    model, ref = official
    model.save_pretrained(tmp_path / "tok")
    again = VFMVAE.from_pretrained(tmp_path / "tok")
    assert again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(
            again.encode_moments(ref["images"]).moments, model.encode_moments(ref["images"]).moments, rtol=0, atol=0
        )
        torch.testing.assert_close(again.decode(ref["z"]).sample, model.decode(ref["z"]).sample, rtol=0, atol=0)


def test_official_pth_snapshots_load_with_weights_only(official, tmp_path):
    model, ref = official
    state = load_file(DATA / "official_G.safetensors")
    torch.save({"G": state, "G_ema": state, "training_set_kwargs": {"resolution": 64}}, tmp_path / "snap.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("snap.pth", "bare.pth"):
        converted = convert_official_tokenizer(DATA / "config.yaml", tmp_path / name, DATA / "siglip2-tiny-patch16")
        torch.testing.assert_close(converted.decode(ref["z"]).sample, model.decode(ref["z"]).sample, rtol=0, atol=0)


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"G_ema": _Exploit(str(target))}, f)
    with pytest.raises(CheckpointFormatError, match="refused, not a plain tensor file.*weights_only=True"):
        load_official_weights(tmp_path / "evil.pth")
    assert not target.exists()


def test_conversion_is_strict(tmp_path):
    state = load_file(DATA / "official_G.safetensors")
    for extra_key, message in (
        ("discriminator.head.weight", r"unmapped official keys \(1\): discriminator.head.weight"),
        ("synthesis.blocks.0.mystery.weight", "unexpected keys: synthesis.blocks.0.mystery.weight"),
    ):
        save_file(dict(state, **{extra_key: torch.zeros(1)}), tmp_path / "extra.safetensors")
        with pytest.raises(CheckpointFormatError, match=message):
            convert_official_tokenizer(
                DATA / "config.yaml", tmp_path / "extra.safetensors", DATA / "siglip2-tiny-patch16"
            )
    missing = {k: v for k, v in state.items() if not k.startswith("mapping.mlp.fc1")}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"missing keys: mapping.fc1.bias, mapping.fc1.weight"):
        convert_official_tokenizer(
            DATA / "config.yaml", tmp_path / "missing.safetensors", DATA / "siglip2-tiny-patch16"
        )
    bad_cfg = tmp_path / "cfg.yaml"
    bad_cfg.write_text((DATA / "config.yaml").read_text().replace("legacy: True", "legacy: True\n  frobnicate: 3"))
    with pytest.raises(CheckpointFormatError, match=r"unknown G_kwargs keys \['frobnicate'\]"):
        convert_official_tokenizer(bad_cfg, DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((DATA / "config.yaml").read_text().replace("z_dimension: 8 ", "z_dimension: 16 "))
    with pytest.raises(CheckpointFormatError, match="shape mismatches"):
        convert_official_tokenizer(wrong, DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16")


def test_older_block_naming_is_accepted(official, tmp_path):
    model, ref = official
    resolutions = model.config.block_resolutions()
    state = load_file(DATA / "official_G.safetensors")
    renamed = {}
    for k, v in state.items():
        for i, res in enumerate(resolutions):
            k = k.replace(f"synthesis.blocks.{i}.", f"synthesis.b{res}.")
        renamed[k] = v
    save_file(renamed, tmp_path / "old.safetensors")
    old = convert_official_tokenizer(DATA / "config.yaml", tmp_path / "old.safetensors", DATA / "siglip2-tiny-patch16")
    torch.testing.assert_close(old.decode(ref["z"]).sample, model.decode(ref["z"]).sample, rtol=0, atol=0)


def test_default_architecture_shapes():
    """The released f16d32 layout (full-size decoder) on a small stand-in VFM with SigLIP2's patch 16 and the
    official x2 input scale: 256 px images give 32 x 16 x 16 latents."""
    torch.manual_seed(0)
    small_vit = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=16, image_size=512
    )
    vfm = VFMSpec(name="custom", family="siglip", arch=small_vit, layers=(0, 2, -1), scale_factor=2.0)
    model = VFMVAE(VFMVAEConfig(vfm=vfm)).eval()
    decoder = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("synthesis.", "mapping.", "post_proj."))
    )
    assert 125e6 < decoder < 130e6  # official: synthesis ~120M + z_convs ~5.5M + post_quant ~1.9M + mapping ~0.5M
    with torch.no_grad():
        post = model.encode(torch.rand(1, 3, 256, 256))
        assert post.mean.shape == (1, 32, 16, 16)
        decoded = model.decode(post.mean)
        image, multiscale = decoded.sample, decoded.multiscale
    assert image.shape == (1, 3, 256, 256) and [m.shape[-1] for m in multiscale] == [128, 64, 32, 16, 8]
    assert torch.isfinite(image).all()


def test_bf16_autocast_decode_stays_close_to_float32():
    """Every decoder block type under bf16 autocast. A narrow 64 px decoder: on CPUs without bf16 kernels the
    grouped and depthwise convolutions in bf16 fall back to a per-group loop (minutes at full size), and the
    numerics under test do not depend on width; the full-size bf16 path runs in make gpu-check."""
    torch.manual_seed(0)
    small_vit = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=16, image_size=128
    )
    vfm = VFMSpec(name="custom", family="siglip", arch=small_vit, layers=(0, 2, -1), scale_factor=2.0)
    narrow = VFMVAEConfig(vfm=vfm, image_size=64, channel_base=4096, channel_max=128, inject_dims=(128,) * 4, w_dim=128)
    model = VFMVAE(narrow).eval()
    with torch.no_grad():
        latent = model.encode(torch.rand(1, 3, 64, 64)).mean
        image = model.decode(latent).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.decode(latent).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 < (out - image).abs().mean() < 0.05  # bf16 ran (not bit-equal) and stays close to fp32


def test_tiny_encode_at_256_and_512(official):
    model, _ = official
    with torch.no_grad():
        assert model.encode(torch.rand(1, 3, 64, 64)).mean.shape == (1, 8, 4, 4)
        assert model.encode(torch.rand(1, 3, 128, 128)).mean.shape == (1, 8, 8, 8)  # 2x the training size
        with pytest.raises(ValueError, match="must be a multiple of 4"):
            model.decode(torch.randn(1, 8, 2, 2))


def test_convert_and_reconstruct_commands(tmp_path, synthetic_dir, capsys):
    from vfmvae.cli import main
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    assert (
        main(
            [
                "convert",
                "official-tokenizer",
                "--config",
                str(DATA / "config.yaml"),
                "--weights",
                str(DATA / "official_G.safetensors"),
                "--vfm",
                str(DATA / "siglip2-tiny-patch16"),
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    assert (tmp_path / "tok" / "config.json").is_file()
    write_synthetic_dataset(SyntheticConfig(out=tmp_path / "syn", num=6, classes=2, size=64), progress=False)
    assert (
        main(
            [
                "reconstruct",
                "--model",
                str(tmp_path / "tok"),
                "--input",
                str(tmp_path / "syn" / "images"),
                "--output",
                str(tmp_path / "rec"),
                "--batch-size",
                "4",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    pngs = sorted((tmp_path / "rec" / "images").rglob("*.png"))
    assert len(pngs) == 6 and (tmp_path / "rec" / "comparison.png").is_file()
    import json

    summary = json.loads((tmp_path / "rec" / "reconstruct.json").read_text())
    assert summary["num_images"] == 6 and summary["latent"] == "posterior sample" and 3 < summary["psnr_mean"] < 40
    assert "PSNR" in capsys.readouterr().out
    assert (
        main(
            [
                "convert",
                "official-tokenizer",
                "--config",
                str(DATA / "config.yaml"),
                "--weights",
                str(tmp_path / "nope.pth"),
                "--vfm",
                str(DATA / "siglip2-tiny-patch16"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "official checkpoint not found" in capsys.readouterr().err


def test_full_forward_with_sampling_matches_the_official(official):
    """The official `G(images, validation=True)`: posterior sample under the global seed, then decode."""
    model, ref = official
    with torch.no_grad():
        torch.manual_seed(6)
        z = model.encode(ref["images"]).sample()
        decoded = model.decode(z)
        image, multiscale = decoded.sample, decoded.multiscale
    torch.testing.assert_close(image, ref["forward_seed6_gen_img"], rtol=0, atol=1e-4)
    for i, m in enumerate(multiscale):
        torch.testing.assert_close(m, ref[f"forward_seed6_multiscale_{i}"], rtol=0, atol=1e-4)


def test_discrete_mode(tmp_path):
    """Multi-codebook normalised VQ (the official discrete option). No official parity data exists for it."""
    tiny_vit = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16, image_size=128
    )
    vfm = VFMSpec(name="custom", family="siglip", arch=tiny_vit, layers=(0, -1), scale_factor=2.0)
    cfg = VFMVAEConfig(
        vfm=vfm,
        proj_dims=(16, 16),
        image_size=64,
        compression="discrete",
        vocab_size=64,
        vocab_width=16,
        num_codebooks=4,
        w_dim=64,
        inject_dims=(32, 16, 16, 16),
        channel_base=2048,
        channel_max=64,
    )
    torch.manual_seed(0)
    model = VFMVAE(cfg)
    x = torch.rand(2, 3, 64, 64)
    latent = model.encode(x)
    z = latent.mode()
    assert z.shape == (2, 16, 4, 4) and latent.indices.shape == (2, 4, 4, 4) and torch.equal(latent.sample(), z)
    tokens = z.flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, model.quantizer.lookup(latent.indices.flatten(2)))  # codes are table rows
    chunks = tokens.reshape(2, 16, 4, 4).norm(dim=-1)
    torch.testing.assert_close(chunks, torch.ones_like(chunks))  # every 4-d chunk is a unit codebook vector
    # nearest code by cosine similarity
    raw = model.encode_moments(x).moments.flatten(2).transpose(1, 2)[0, 0, :4]
    book = torch.nn.functional.normalize(model.quantizer.codebooks[0].codebook.weight, dim=1)
    assert int((torch.nn.functional.normalize(raw, dim=0) @ book.T).argmax()) == int(latent.indices[0, 0, 0, 0])
    # straight-through: reconstruction gradients reach the encoder projections
    model.decode(z).sample.mean().backward()
    assert model.final_proj.blocks[0].proj.weight.grad.abs().sum() > 0
    assert float(latent.vq_loss) > 0 and torch.equal(latent.kl(), torch.zeros(2))
    model.save_pretrained(tmp_path / "vq")
    again = VFMVAE.from_pretrained(tmp_path / "vq")
    with torch.no_grad():
        assert torch.equal(again.encode(x).indices, latent.indices)
