"""The SE-CKNNA DINOv2 reference as the official extractor computes it, and REG's real class token as it was cached.

* tianciB/VFM-VAE@b3a752a tools/evaluate_alignment/vfms/extract_features_by_dinov2.py runs timm's
  `vit_base_patch14_dinov2` with `dynamic_img_size=True`: every forward resamples the 37 x 37 position table to the
  input's grid with `resample_abs_pos_embed` (bicubic, antialias). Checked against timm itself, on the grids of the
  clean, non-square and equivariance inputs (16, 12, 8 and 4 patches).
* A REG model's SE-CKNNA features take the image's class token from the VFM of its latent cache; it must be the
  token `cache-latents` stored as the training target (REG's table resampling and resize included).
"""

import torch


def test_position_table_resample_is_timms_on_the_grids_of_every_reference_input():
    from timm.layers import resample_abs_pos_embed

    from vfmvae.latents.targets import resample_position_table as reg_targets_resample
    from vfmvae.vfm.positions import resample_position_table

    assert reg_targets_resample is resample_position_table  # one implementation for REG targets and SE-CKNNA
    table = torch.randn(1, 1 + 37 * 37, 24, generator=torch.Generator().manual_seed(0))
    for grid in [(16, 16), (12, 12), (8, 8), (4, 4), (16, 21), (37, 37), (40, 40)]:
        expected = resample_abs_pos_embed(table, new_size=list(grid), num_prefix_tokens=1)
        torch.testing.assert_close(resample_position_table(table, grid), expected, rtol=0, atol=0)


def _tiny_dinov2_and_its_timm_twin(folder):
    """A random transformers DINOv2 with the official 37 x 37 table (patch 14, 518 px), saved as a model folder,
    and timm's `vit_base_patch14_dinov2` architecture at the same size holding the same weights."""
    import timm

    from vfmvae.vfm.families import VFM_ADAPTERS

    arch = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4,
            "patch_size": 14, "image_size": 518, "layerscale_value": 0.5}  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = VFM_ADAPTERS["dinov2"].build(arch).eval()
        with torch.no_grad():
            for p in hf.parameters():  # random everything, the table included (it is zero-initialised)
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(folder)
    official = timm.create_model(
        "vit_base_patch14_dinov2", pretrained=False, dynamic_img_size=True, num_classes=0,
        embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, img_size=518,
    ).eval()  # fmt: skip
    sd = hf.state_dict()
    ours = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(2):
        layer = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{layer}attention.{n}_proj.{kind}"] for n in ("q", "k", "v")]
            ours[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv)
            ours[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{layer}attention.o_proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                ours[f"blocks.{i}.{name}.{kind}"] = sd[f"{layer}{name}.{kind}"]
        ours[f"blocks.{i}.ls1.gamma"] = sd[f"{layer}layer_scale1.lambda1"]
        ours[f"blocks.{i}.ls2.gamma"] = sd[f"{layer}layer_scale2.lambda1"]
    official.load_state_dict(ours, strict=True)
    return official


def test_dinov2_reference_features_are_the_official_timm_extractors(tmp_path):
    from vfmvae.alignment.extract import dinov2_input, load_source

    official = _tiny_dinov2_and_its_timm_twin(tmp_path / "dinov2")
    _, features = load_source(f"vfm:{tmp_path / 'dinov2'}")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(1)
    cases = [(torch.randint(0, 256, (1, 3, 64, 64), generator=g), 1.0, False)]  # clean: 224 px, 16 x 16
    cases.append((torch.randint(0, 256, (1, 3, 64, 80), generator=g), 1.0, False))  # non-square: 16 x 20
    cases += [(cases[0][0], s, True) for s in (1.0, 0.75, 0.5, 0.25)]  # equivariance: 16, 12, 8, 4 patches
    for x, scale, equivariance in cases:
        x = x.float() / 255
        with torch.no_grad():
            pixels = (dinov2_input(x, scale, equivariance) - mean) / std
            expected = official.forward_features(pixels)[:, 1:].mean(1)  # the official `global_pool`
            got = features(x, scale, equivariance, 0)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=f"scale {scale}, {tuple(x.shape)}")


def test_reg_class_token_is_the_cached_training_target(tmp_path, synthetic_dir):
    """A cache whose DINOv2 targets shrink (64 px images, targets at 24 px: the 4 x 4 table of dinov2-test to 3 x 3),
    where REG's preparation (antialiased table, plain resize) differs from the plain VFM's."""
    import shutil

    from helpers import tiny_official_tokenizer

    from vfmvae.alignment.extract import _reg_class_token_source
    from vfmvae.data import ImageFolderDataset, to_float01
    from vfmvae.latents import LatentDataset, cache_latents
    from vfmvae.latents.stats import LatentStats

    data = tmp_path / "data"
    for path in sorted((synthetic_dir / "images").rglob("*.png"))[:4]:
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, data / path.parent.name / path.name)
    tok = tiny_official_tokenizer(tmp_path / "tok")
    cache = tmp_path / "cache"
    cache_latents(tok, data, cache, vfm_features="dinov2-test", vfm_resolution=24, batch_size=4, num_workers=0,
                  device="cpu", progress=False)  # fmt: skip
    token = _reg_class_token_source(LatentStats.from_cache(cache), "REG export", "cpu")
    cached = LatentDataset(cache)
    images = ImageFolderDataset(data, 64)
    for i in range(4):
        with torch.no_grad():
            got = token(to_float01(images[i]["image"])[None])[0]
        torch.testing.assert_close(got.half().float(), cached[i]["vfm_cls"], rtol=2e-3, atol=2e-3)
