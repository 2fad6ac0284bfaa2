"""Our diffusers classes behave as diffusers' own model and pipeline tests expect.

diffusers' test mixins (`ModelTesterMixin`, `AutoencoderTesterMixin`, `PipelineTesterMixin`) are not shipped in
its wheel or its PyPI source distribution, so they cannot run here; these tests check, in our own code, the
behaviours those mixins check that apply to our three classes (save/load, dict/tuple outputs, dtype loading,
slicing, tiling refusal, gradient checkpointing, attention processors, batched labels, one generator per image,
half precision), on micro models: a 32-px tokenizer (2 decoder blocks) and a 2-block, 32-wide transformer on its
4x2x2 latents, so that each test takes a second or two on a loaded CPU.
"""

import json

import pytest
import torch

pytest.importorskip("diffusers", reason='diffusers is not installed (pip install "vfmvae[diffusers]")')

from vfmvae.diffusers import VFMVAEAutoencoder, VFMVAEDiffusionPipeline, VFMVAETransformer2DModel  # noqa: E402
from vfmvae.diffusion import create_diffusion_model  # noqa: E402

MICRO_TOKENIZER = {
    "vfm": {"name": "siglip2-test", "random_init": True, "scale_factor": 2.0, "layers": [0, 2, -1]},
    "proj_dims": [8, 8, 8],
    "image_size": 32,
    "z_dim": 4,
    "w_dim": 16,
    "decompress_factor": 4,
    "inject_blocks": [0, 1],
    "inject_dims": [16, 16],
    "num_blocks": 2,
    "channel_base": 1024,
    "channel_max": 32,
    "attn_blocks": [0],
    "attn_depths": [1],
    "attn_heads": 2,
    "num_res_blocks": 1,
    "extra_convnext": False,
    "legacy_noise": False,
}
STATS = {"latents_mean": [0.1, -0.2, 0.0, 0.3], "latents_std": [1.5, 0.5, 1.0, 2.0]}


def micro_vae() -> VFMVAEAutoencoder:
    torch.manual_seed(0)
    return VFMVAEAutoencoder(tokenizer_config=MICRO_TOKENIZER, **STATS)


def micro_transformer(family: str = "reg-sit-tiny") -> VFMVAETransformer2DModel:
    """A tiny transformer with perturbed weights (DiT's init zeroes the output layer: a zero velocity)."""
    torch.manual_seed(0)
    extra = {"class_token_dim": 8} if family.startswith("reg") else {}
    model = create_diffusion_model(
        family, in_channels=4, input_size=2, num_classes=4, hidden_size=32, num_heads=2, depth=2, **extra
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return VFMVAETransformer2DModel.from_vfmvae(model).train()


@pytest.fixture(scope="module")
def micro_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("micro") / "pipe"
    VFMVAEDiffusionPipeline(transformer=micro_transformer(), vae=micro_vae()).save_pretrained(folder)
    return folder


def _images(n=2):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _transformer_inputs(model, n=3):
    g = torch.Generator().manual_seed(2)
    c = model.dit.config
    return {
        "hidden_states": torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g),
        "timestep": torch.rand(n, generator=g),
        "class_labels": torch.arange(n) % c.num_classes,
        "class_token": torch.randn(n, c.class_token_dim, generator=g) if c.class_token_dim else None,
    }


# ---- models: as ModelTesterMixin / AutoencoderTesterMixin check them ----------------------------------------------
def test_models_save_load_tuple_outputs_and_half_dtype_loading(tmp_path):
    vae, transformer = micro_vae().eval(), micro_transformer().eval()
    x, inputs = _images(), _transformer_inputs(transformer)
    for name, model, call in (
        ("vae", vae, lambda m: m(x)),
        ("transformer", transformer, lambda m, **kw: m(**inputs, **kw)),
    ):
        model.save_pretrained(tmp_path / name)
        loaded = type(model).from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            first, reloaded = call(model).sample, call(loaded).sample
            (as_tuple, *_) = call(model, return_dict=False) if name == "transformer" else model(x, return_dict=False)
        torch.testing.assert_close(reloaded, first, rtol=0, atol=1e-5)
        torch.testing.assert_close(as_tuple, first, rtol=0, atol=0)
        for dtype in (torch.float16, torch.bfloat16):
            half = type(model).from_pretrained(tmp_path / name, torch_dtype=dtype)
            assert {p.dtype for p in half.parameters()} == {dtype}


def test_vae_slicing_gives_the_same_images_and_tiling_is_refused_with_the_reason():
    vae = micro_vae().eval()
    x = _images(3)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist
        z = whole.mode()
        decoded = vae.decode(z).sample
        vae.enable_slicing()
        sliced = vae.encode(x).latent_dist
        torch.testing.assert_close(sliced.mean, whole.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(sliced.std, whole.std, rtol=0, atol=1e-5)
        torch.testing.assert_close(vae.decode(z).sample, decoded, rtol=0, atol=1e-5)
        vae.disable_slicing()
        torch.testing.assert_close(vae.decode(z).sample, decoded, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="cannot tile: its encoder is a vision transformer.*enable_slicing"):
        vae.enable_tiling()


@pytest.mark.parametrize("which", ["vae", "transformer"])
def test_gradient_checkpointing_switches_and_gives_the_same_loss_and_gradients(which):
    def build():
        return micro_vae().train() if which == "vae" else micro_transformer().train()

    def loss_and_grads(model):
        if which == "vae":
            z = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(3))
            out = model.decode(z).sample
        else:
            out = model(**_transformer_inputs(model)).sample
        loss = (out - torch.linspace(-1, 1, out.numel()).view_as(out)).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = build()
    assert not plain.is_gradient_checkpointing
    loss, grads = loss_and_grads(plain)
    checkpointed = build()
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.is_gradient_checkpointing
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=5e-6, msg=name)
    checkpointed.disable_gradient_checkpointing()
    assert not checkpointed.is_gradient_checkpointing


def test_transformer_attention_processors_can_be_listed_and_swapped():
    from diffusers.models.attention_processor import AttnProcessor, XFormersAttnProcessor

    from vfmvae.diffusion.layers import MathProcessor, SDPAProcessor

    model = micro_transformer().eval()
    inputs = _transformer_inputs(model)
    processors = model.attn_processors
    assert sorted(processors) == ["dit.blocks.0.attn.processor", "dit.blocks.1.attn.processor"]
    assert all(isinstance(p, SDPAProcessor) for p in processors.values())
    with torch.no_grad():
        fused = model(**inputs).sample
        model.set_attn_processor({name: MathProcessor() for name in processors})
        assert all(isinstance(p, MathProcessor) for p in model.attn_processors.values())
        torch.testing.assert_close(model(**inputs).sample, fused, rtol=0, atol=1e-5)
        calls = []

        def counting(attn, hidden_states, **kwargs):  # a user's own processor: any callable
            calls.append(hidden_states.shape)
            return SDPAProcessor()(attn, hidden_states)

        model.set_attn_processor(counting)
        torch.testing.assert_close(model(**inputs).sample, fused, rtol=0, atol=1e-5)
        assert len(calls) == 2
    with pytest.raises(ValueError, match="number of processors"):
        model.set_attn_processor({"dit.blocks.0.attn.processor": MathProcessor()})
        model.set_attn_processor(AttnProcessor())  # diffusers' plain processors run as ours
        assert all(isinstance(p, AttnProcessor) for p in model.attn_processors.values())
        torch.testing.assert_close(model(**inputs).sample, fused, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="separate to_q/to_k/to_v.*fused qkv"):
        model.set_attn_processor(XFormersAttnProcessor())
    model.set_default_attn_processor()
    assert all(isinstance(p, SDPAProcessor) for p in model.attn_processors.values())


# ---- the pipeline: as PipelineTesterMixin and DiTPipeline users call it --------------------------------------------
def test_pipeline_takes_labels_of_any_shape_and_one_generator_per_image(micro_pipeline_dir):
    pipe = VFMVAEDiffusionPipeline.from_pretrained(micro_pipeline_dir)

    def latents(labels, generator):
        (out,) = pipe(labels, num_inference_steps=2, generator=generator, output_type="latent", return_dict=False)
        return out

    seeds = (3, 11, 5)
    batch = latents([[1], [2], [0]], [torch.Generator().manual_seed(s) for s in seeds])  # DiT-style nested labels
    assert batch.shape == (3, 4, 2, 2)
    for i, (label, seed) in enumerate(zip((1, 2, 0), seeds)):
        single = latents(label, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-5)
    # one generator: image i has the per-sample seed (seed, i), whatever the labels' container
    flat = latents(torch.tensor([[1, 2], [0, 3]]), torch.Generator().manual_seed(7))
    listed = latents([1, 2, 0, 3], torch.Generator().manual_seed(7))
    torch.testing.assert_close(flat, listed, rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 generators for 3 images"):
        latents([1, 2, 0], [torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="ids in 0..3"):
        latents([[1], [7]], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="empty"):
        latents([], torch.Generator().manual_seed(0))


def test_pipeline_defaults_are_the_exports_recorded_preset(micro_pipeline_dir, tmp_path):
    """`vfmvae sample` reads DIFFUSION/sampler.json; the diffusers pipeline keeps it in model_index.json."""
    from vfmvae.sampling.presets import resolve_sampler_config

    base = VFMVAEDiffusionPipeline.from_pretrained(micro_pipeline_dir)
    VFMVAEDiffusionPipeline(base.transformer, base.vae, sample_preset="reg-sde").save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["sample_preset"] == "reg-sde"
    pipe = VFMVAEDiffusionPipeline.from_pretrained(tmp_path / "p")
    labels = [1, 3]
    ours = pipe(labels, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="latent").images
    reference = pipe.to_vfmvae().latents(
        labels, seed=4, config=resolve_sampler_config("reg-sde", steps=3)
    )  # SDE, CFG 4, class-token CFG 4 on t <= 0.8, with the one setting given
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    plain = base(labels, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="latent").images
    assert not torch.allclose(plain, ours)  # the preset matters: without one, Euler without guidance
    with pytest.raises(ValueError, match="unknown sampler preset"):
        VFMVAEDiffusionPipeline(base.transformer, base.vae, sample_preset="reg-sdee")


def _half_test_images(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe([1, 2], num_inference_steps=3, guidance_scale=2.0, generator=generator, output_type="pt").images


@pytest.fixture(scope="module")
def float32_images(micro_pipeline_dir):
    return _half_test_images(VFMVAEDiffusionPipeline.from_pretrained(micro_pipeline_dir))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 0.01), (torch.bfloat16, 0.05)])
def test_half_precision_pipelines_generate_images_close_to_float32(
    micro_pipeline_dir, float32_images, dtype, tolerance
):
    """Images in [0, 1]. Measured on CPU (3 Euler steps, CFG 2): max abs difference to float32 0.0006 in float16 and
    0.0025 in bfloat16 with these micro models; 0.0007 and 0.0054 with the tiny official-format tokenizer and a tiny
    REG model. The tolerances leave room for other CPUs. GPU: not measured here."""
    images, reference = _half_test_images, float32_images
    loaded = VFMVAEDiffusionPipeline.from_pretrained(micro_pipeline_dir, torch_dtype=dtype)
    assert loaded.transformer.dtype == dtype and loaded.vae.dtype == dtype
    cast = VFMVAEDiffusionPipeline.from_pretrained(micro_pipeline_dir).to(dtype)
    for pipe in (loaded, cast):
        out = images(pipe).float()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, reference, rtol=0, atol=tolerance)


def test_lightningdit_attention_with_rope_runs_in_half_precision(tmp_path):
    """diffusers' from_pretrained(torch_dtype=...) leaves unsaved buffers (the RoPE tables) in float32; they must not
    promote q and k (but not v) of a half model: SDPA refuses mixed dtypes."""
    model = micro_transformer("lightningdit-tiny").eval()
    assert model.dit.config.rope
    model.save_pretrained(tmp_path / "ldit")
    inputs = _transformer_inputs(model)
    with torch.no_grad():
        reference = model(**inputs).sample
        for dtype in (torch.float16, torch.bfloat16):
            half = VFMVAETransformer2DModel.from_pretrained(tmp_path / "ldit", torch_dtype=dtype)
            cast = {k: v.to(dtype) if v is not None and v.is_floating_point() else v for k, v in inputs.items()}
            out = half(**cast).sample
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), reference, rtol=0, atol=0.05 * reference.abs().max().item())
