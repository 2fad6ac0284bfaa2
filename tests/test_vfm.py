import pytest
import torch
import torch.nn.functional as F

from vfmvae.vfm import VFM_ADAPTERS, VFM_REGISTRY, VFMLoadError, VFMSpec, build_vfm, list_vfms

TEST_VFMS = sorted(n for n in VFM_REGISTRY if n.endswith("-test"))
MEAN_STD = {  # the families' own normalisation, written out independently of the implementation
    "siglip": ((0.5,) * 3, (0.5,) * 3),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "dinov2-reg": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "dinov3": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "mae": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "eva": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
PREFIX = {"siglip": 0, "dinov2": 1, "dinov2-reg": 5, "dinov3": 5, "clip": 1, "mae": 1, "eva": 1}


def _normalise(x, family):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in MEAN_STD[family])
    return (x - mean) / std


def _direct_taps(vfm, pixels):
    """The underlying transformers/timm model called directly: [emb, blocks..., final] with prefix tokens."""
    m, family = vfm.model, vfm.family
    if family == "eva":
        n = len(m.blocks)
        blocks = m.forward_intermediates(
            pixels,
            indices=list(range(n)),
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        blocks = [torch.cat([prefix, x], 1) for x, prefix in blocks]
        emb = m._pos_embed(m.patch_embed(pixels))[0]
        return [emb, *blocks, m.forward_features(pixels)]
    kwargs = {"output_hidden_states": True}
    if family in ("siglip", "clip", "mae"):
        kwargs["interpolate_pos_encoding"] = True
    if family == "mae":
        n = (pixels.shape[-2] // 8) * (pixels.shape[-1] // 8)
        kwargs["noise"] = torch.arange(n, dtype=torch.float32).expand(pixels.shape[0], n)
    out = m(pixel_values=pixels, **kwargs)
    final = m.post_layernorm(out.last_hidden_state) if family == "clip" else out.last_hidden_state
    return [*out.hidden_states, final]


@pytest.mark.parametrize("name", TEST_VFMS)
def test_shapes_layers_and_equality_with_the_underlying_model(name):
    vfm = build_vfm(VFMSpec(name, layers=(0, 1, 2, -2, -1), scale_factor=1.5))
    family = vfm.family
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    feats = vfm(images)
    assert feats.grid == (6, 9) and len(feats.tokens) == 5
    for t in feats.tokens:
        assert t.shape == (2, 54, 64) and t.dtype == torch.float32
    assert [m.shape for m in feats.maps()] == [(2, 64, 6, 9)] * 5
    torch.testing.assert_close(feats.maps()[0][:, :, 1, 2], feats.tokens[0][:, 1 * 9 + 2])  # row-major grid

    mode = "bicubic" if family in ("dinov2", "dinov2-reg", "dinov3", "clip", "eva") else "bilinear"
    pixels = _normalise(F.interpolate(images, scale_factor=1.5, mode=mode, align_corners=False), family)
    direct = _direct_taps(vfm, pixels)
    assert len(direct) == vfm.num_layers + 2
    p = PREFIX[family]
    for got, index in zip(feats.tokens, (0, 1, 2, -2, -1)):
        torch.testing.assert_close(got, direct[index][:, p:], rtol=1e-5, atol=1e-5, msg=f"layer {index}")
    assert not torch.allclose(feats.tokens[-1], feats.tokens[-2])  # final != last block (a norm is applied)
    if feats.cls is not None:
        torch.testing.assert_close(feats.cls, direct[-1][:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TEST_VFMS)
def test_frozen_deterministic_and_dynamic_resolution(name):
    vfm = build_vfm(VFMSpec(name, layers=(-1,)))
    assert all(not p.requires_grad for p in vfm.parameters())
    vfm.train()
    assert not vfm.training and not vfm.model.training
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    a, b = vfm(x), vfm(x)
    assert torch.equal(a.tokens[0], b.tokens[0]) and a.tokens[0].grad_fn is None
    again = build_vfm(VFMSpec(name, layers=(-1,)))
    assert torch.equal(again(x).tokens[0], a.tokens[0])  # same seed, same random weights
    big = vfm(torch.rand(1, 3, 64, 40))
    assert big.grid == (8, 5) and big.tokens[0].shape == (1, 40, 64)


def test_input_range_flag_and_scale_factor():
    unit = build_vfm(VFMSpec("siglip2-test", layers=(-1,), scale_factor=2.0))
    sym = build_vfm(VFMSpec("siglip2-test", layers=(-1,), scale_factor=2.0), input_range="-1,1")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(unit(x).tokens[0], sym(x * 2 - 1).tokens[0], rtol=1e-5, atol=1e-5)
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    plain = build_vfm(VFMSpec("siglip2-test", layers=(-1,), scale_factor=1.0))
    torch.testing.assert_close(unit(x).tokens[0], plain(up).tokens[0], rtol=1e-5, atol=1e-5)
    assert unit(x).grid == (4, 4)


def test_official_siglip2_and_dinov2_extraction():
    """The official VFM-VAE recipe: SigLIP2 taps [0, mid, -1] on 2x bilinear input, (x - 0.5) / 0.5;
    DINOv2 taps with bicubic resize and ImageNet statistics, class token dropped."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    siglip = build_vfm(VFMSpec("siglip2-test", layers=(0, 2, -1), scale_factor=2.0))
    out = siglip.model(
        pixel_values=(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) - 0.5) / 0.5,
        output_hidden_states=True,
        interpolate_pos_encoding=True,
    )
    expected = [out.hidden_states[0], out.hidden_states[2], out.last_hidden_state]
    for got, exp in zip(siglip(x).tokens, expected):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    dino = build_vfm(VFMSpec("dinov2-test", layers=(0, 2, -1), scale_factor=1.75))
    x = torch.rand(2, 3, 32, 32)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    out = dino.model(
        pixel_values=(F.interpolate(x, scale_factor=1.75, mode="bicubic", align_corners=False) - mean) / std,
        output_hidden_states=True,
    )
    expected = [out.hidden_states[0][:, 1:], out.hidden_states[2][:, 1:], out.last_hidden_state[:, 1:]]
    for got, exp in zip(dino(x).tokens, expected):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)


def test_layer_and_size_errors():
    vfm = build_vfm(VFMSpec("dinov2-test", layers=(-1,)))
    with pytest.raises(ValueError, match=r"out of range .* 4 blocks \(valid: -6 .. 5\)"):
        vfm(torch.rand(1, 3, 32, 32), layers=(6,))
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        vfm(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vfm(torch.rand(3, 32, 32))


def test_local_folders_load_offline(tmp_path):
    from transformers import Dinov2Model, SiglipConfig, SiglipModel

    # a full SigLIP (text + vision) folder, as google/siglip2-* is published: the vision tower is loaded
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=100,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    full.save_pretrained(tmp_path / "siglip2-tiny")
    vfm = build_vfm(VFMSpec.from_name(tmp_path / "siglip2-tiny", layers=(-1,)))
    assert vfm.family == "siglip" and vfm.num_layers == 2
    x = torch.rand(1, 3, 32, 32)
    expected = full.vision_model(pixel_values=(x - 0.5) / 0.5).last_hidden_state
    torch.testing.assert_close(vfm(x).tokens[0], expected, rtol=1e-5, atol=1e-5)

    dino = build_vfm(VFMSpec("dinov2-test", layers=(-1,)))
    dino.model.save_pretrained(tmp_path / "dino")
    # registry settings, local weights
    again = build_vfm(VFMSpec("dinov2-base", path=str(tmp_path / "dino"), layers=(-1,), scale_factor=1.0))
    torch.testing.assert_close(again(x).tokens[0], dino(x).tokens[0])
    assert isinstance(again.model, Dinov2Model)


def test_eva_loads_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    eva = build_vfm(VFMSpec("eva-test", layers=(-1,)))
    save_file(eva.model.state_dict(), tmp_path / "model.safetensors")
    model = VFM_ADAPTERS["eva"].load(tmp_path, VFM_REGISTRY["eva-test"].arch)
    x = torch.rand(1, 3, 32, 32)
    from vfmvae.vfm import FrozenVFM

    torch.testing.assert_close(FrozenVFM(model, "eva")(x).tokens[0], eva(x).tokens[0])


def test_missing_models_say_how_to_provide_them(tmp_path):
    with pytest.raises(VFMLoadError, match=r"huggingface-cli download google/siglip2-large-patch16-512"):
        build_vfm(VFMSpec("siglip2-large-patch16-512"))
    with pytest.raises(VFMLoadError, match="neither a registered VFM name"):
        build_vfm(VFMSpec.from_name(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VFMLoadError, match="no config.json"):
        build_vfm(VFMSpec.from_name(tmp_path / "empty"))
    with pytest.raises(VFMLoadError, match="EVA weights not found"):
        build_vfm(VFMSpec("eva02-large-patch14-clip-336", path=str(tmp_path / "nothing.safetensors")))
    with pytest.raises(ValueError, match="not a registered VFM"):
        VFMSpec("dinov9-base")


def test_registry_entries_match_their_architectures():
    names = {e.name for e in list_vfms(include_test=False)}
    assert {
        "siglip2-large-patch16-512",
        "dinov2-base",
        "dinov2-base-reg",
        "dinov3-vitb16",
        "clip-vit-large-patch14",
        "mae-large",
        "eva02-large-patch14-clip-336",
        "siglip-so400m-patch14-384",
    } <= names
    default = VFM_REGISTRY["siglip2-large-patch16-512"]
    assert (default.patch_size, default.width, default.num_layers, default.scale_factor) == (16, 1024, 24, 2.0)
    assert (
        VFM_REGISTRY["dinov2-base"].patch_size == 14 and VFM_REGISTRY["eva02-large-patch14-clip-336"].patch_size == 14
    )


@pytest.mark.parametrize(
    "name", ["siglip2-base-patch16-256", "dinov2-small-reg", "dinov3-vits16", "clip-vit-base-patch16", "mae-base"]
)
def test_registered_architectures_build_as_described(name):
    entry = VFM_REGISTRY[name]
    vfm = build_vfm(VFMSpec(name, layers=(-1,), scale_factor=1.0, random_init=True))
    assert (vfm.patch_size, vfm.width, vfm.num_layers) == (entry.patch_size, entry.width, entry.num_layers)
    size = 2 * entry.patch_size
    assert vfm(torch.rand(1, 3, size, size)).tokens[0].shape == (1, 4, entry.width)


def test_vfm_list_cli(capsys):
    from vfmvae.cli import main

    assert main(["vfm", "list"]) == 0
    out = capsys.readouterr().out
    assert "siglip2-large-patch16-512" in out and "google/siglip2-large-patch16-512" in out and "-test" not in out
    assert main(["vfm", "list", "--all"]) == 0
    assert "dinov2-test" in capsys.readouterr().out
