"""One official discriminator step and generator step per stage (0-3), replayed by `TokenizerObjective`.

tests/data/official_tokenizer_steps holds what the official training code (tianciB/VFM-VAE@b3a752a
training/loss.py `TotalLoss.accumulate_gradients`, networks/discriminator.py) computed for the tiny generator of
tests/data/official_tokenizer_tiny, a tiny projected discriminator and PatchGAN, with every draw recorded
(scripts/parity/make_official_tokenizer_steps.py). Here the same weights and draws go through our objective:
every term the official `training_stats` reports agrees to 1e-4 (relative), the gradient norms to 1e-3, and the
discriminator heads' spectral-norm vectors after each pass agree (power-iteration order, order of the calls).
"""

from __future__ import annotations

import contextlib
import json
import math
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from vfmvae.data.loader import DataConfig
from vfmvae.tokenizer.convert import convert_official_tokenizer
from vfmvae.tokenizer_training.config import LossConfig, TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.draws import AugmentDraw, PassDraws
from vfmvae.tokenizer_training.equivariance import EquivarianceDraw
from vfmvae.tokenizer_training.objective import TokenizerObjective
from vfmvae.tokenizer_training.stages import select_trainable

DATA = Path(__file__).parent / "data" / "official_tokenizer_steps"
TINY = Path(__file__).parent / "data" / "official_tokenizer_tiny"
STAGE_OF_MODE = {"train_all": "all", "train_decoder": "decoder", "train_the_second_half_decoder": "late_decoder"}
# the official generator's parameter groups -> ours (tokenizer/convert.py maps the names)
GROUPS = {
    "ldm_adapter": ("patch_projs.", "final_proj.", "vf_proj.", "post_proj.", "quantizer."),
    "mapping": ("mapping.",),
    "synthesis": ("synthesis.",),
}
TERM_RTOL, GRAD_RTOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def reference():
    steps = json.loads((DATA / "steps.json").read_text())
    return steps, load_file(DATA / "images.safetensors")["images"], load_file(DATA / "discriminator.safetensors")


@pytest.fixture(scope="module")
def tokenizer():
    model = convert_official_tokenizer(
        TINY / "config.yaml", TINY / "official_G.safetensors", TINY / "siglip2-tiny-patch16"
    )
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _lpips_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """The deterministic LPIPS weights of the parity data (scripts/parity/make_official_tokenizer_steps.py
    `lpips_weights`): per key in sorted order, one standard normal draw, scaled by sqrt(2 / fan_in) for 3x3
    kernels, 0.1 (absolute value) for the 1-channel heads, 0.01 for biases."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key in sorted(shapes):
        shape = shapes[key]
        draw = torch.randn(shape, generator=generator)
        if len(shape) == 4 and shape[0] == 1:
            weights[key] = draw.abs() * 0.1
        elif len(shape) == 4:
            weights[key] = draw * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        else:
            weights[key] = draw * 0.01
    return weights


@pytest.fixture(scope="module")
def lpips_net(reference):
    import lpips
    import lpips.pretrained_networks as trunks
    from torchvision.models import vgg

    steps = reference[0]
    # only VGG16's convolutions: lpips builds the whole torchvision model (and initialises its 120M-parameter
    # classifier, seconds of CPU) to keep `.features`; every weight is replaced below
    features_only = lambda **kwargs: types.SimpleNamespace(features=vgg.make_layers(vgg.cfgs["D"]))  # noqa: E731
    with mock.patch.object(trunks.tv, "vgg16", features_only), contextlib.redirect_stdout(None):
        net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    own = {
        k: tuple(v.shape)
        for k, v in net.state_dict().items()
        if k.startswith(("net.", "lin")) and not k.startswith("lins.")
    }
    weights = _lpips_weights(own, steps["lpips_seed"])
    assert sorted(weights) == sorted(steps["lpips_sums"])  # the same tensors as the official module's
    for key, (total, squares) in steps["lpips_sums"].items():
        assert float(weights[key].double().sum()) == pytest.approx(total, rel=1e-9, abs=1e-9), key
        assert float(weights[key].double().square().sum()) == pytest.approx(squares, rel=1e-9), key
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(("scaling_layer.", "lins.")) for k in missing)
    return net.eval().requires_grad_(False)


def _projected_key(official: str) -> str | None:
    """Official discriminator key -> ours. Official heads 0-3 read blocks 2, 5, 8, 11 and head 4 the patch
    tokens; our head 0 reads the patch tokens."""
    if official.startswith("dino.model.model."):
        return "dino." + official[len("dino.model.model.") :]
    if official.startswith("heads."):
        _, index, rest = official.split(".", 2)
        for theirs, ours in (
            ("main.0.0.", "main.0."),
            ("main.0.1.", "main.1."),
            ("main.1.fn.0.", "res.0."),
            ("main.1.fn.1.", "res.1."),
            ("cls.", "cls."),
        ):
            if rest.startswith(theirs):
                return f"heads.{(int(index) + 1) % 5}.{ours}{rest[len(theirs) :]}"
    return None


def _patchgan_key(official: str) -> str | None:
    """Official `scale{i}_layer{j}` (input i scored by scale 2 - i) -> our `scales.{input}.{j}`."""
    if not official.startswith("patchgan_discriminator.scale"):
        return None
    scale_layer, rest = official[len("patchgan_discriminator.") :].split(".", 1)
    scale, layer = scale_layer[len("scale") :].split("_layer")
    return f"scales.{2 - int(scale)}.{layer}.{rest}"


def _load(module: torch.nn.Module, official: dict[str, torch.Tensor], mapper, strict: bool = True) -> None:
    mapped = {key: value for name, value in official.items() if (key := mapper(name)) is not None}
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected[:4]
    if strict:
        assert not missing, missing[:4]


def _draws(phase: dict, tensors: dict[str, torch.Tensor], phase_name: str, crop_size: int) -> PassDraws:
    eq = phase["equivariance"]
    augments = []
    for index, call in enumerate(phase["augment_calls"]):
        prefix = f"{phase_name}.augment{index}."
        augments.append(
            AugmentDraw.from_integers(
                tensors[prefix + "brightness"],
                tensors[prefix + "saturation"],
                tensors[prefix + "contrast"],
                tensors[prefix + "shift"],
                tensors[prefix + "cutout_offset"],
                size=tuple(call["size"]),
                crop=tuple(call["crop"]) if call["crop"] is not None else None,
                crop_size=crop_size,
            )
        )
    return PassDraws(
        equivariance=EquivarianceDraw(eq["scale"], eq["rotation"], on_latent=not eq["is_eq_prior"]),
        posterior_noise=tensors[f"{phase_name}.posterior_noise"],
        fake_augment=augments[0],
        real_augment=augments[1] if phase_name == "D" else None,  # the G pass's second call: see objective.py
    )


def _norm(tensors) -> float:
    values = [t.double().square().sum() for t in tensors]
    return float(torch.stack(values).sum().sqrt()) if values else 0.0


def _assert_terms(ours: dict[str, torch.Tensor], official: dict[str, float], where: str) -> None:
    compared = 0
    for name, expected in official.items():
        if name.endswith("/skipped") or "/is_safe/" in name:
            continue  # the guard's flags: inactive in these steps
        assert name in ours, f"{where}: no term {name}"
        got = float(ours[name])
        rtol = TERM_RTOL
        if name == "Loss/G/vf_weight":
            rtol = GRAD_RTOL  # a ratio of two gradient norms: held to the gradients' tolerance
        elif name == "Loss/G/total" and "Loss/G/vf_weight" in official:
            # the total with our VF weight in place of the official one: the assembly is held to 1e-4, the
            # weight's own float noise (about 3e-4, with the thread count) is checked above
            weight_change = float(ours["Loss/G/vf_weight"]) - official["Loss/G/vf_weight"]
            expected += weight_change * official["Loss/G/vf_loss"]
        assert got == pytest.approx(expected, rel=rtol, abs=1e-7), f"{where} {name}: {got} vs {expected}"
        compared += 1
    assert compared >= 5, f"{where}: only {compared} terms"


def _assert_spectral(projected: ProjectedDiscriminator, tensors: dict[str, torch.Tensor], when: str) -> None:
    state = projected.state_dict()
    keys = [k for k in tensors if k.startswith(f"{when}.after.")]
    assert len(keys) == 30  # 5 heads x 3 convolutions x (u, v)
    for key in keys:
        ours = state[_projected_key(key[len(f"{when}.after.") :])]
        torch.testing.assert_close(ours, tensors[key], rtol=0, atol=2e-5, msg=key)


@pytest.mark.parametrize("stage", ["stage0", "stage1", "stage2", "stage3"])
def test_one_d_step_then_one_g_step_match_the_official_training_code(stage, reference, tokenizer, lpips_net):
    steps, images, official_d = reference
    record = steps["stages"][stage]
    tensors = load_file(DATA / f"{stage}.safetensors")
    model, initial = tokenizer
    model.load_state_dict(initial)
    model.zero_grad(set_to_none=True)  # the module-scoped model carries the previous stage's gradients
    model.train()
    dino = steps["dino"]
    projected = ProjectedDiscriminator(
        input_size=dino["img_size"],
        backbone_kwargs={k: v for k, v in dino.items() if k != "img_size"},
        resize_mode=model.vfm.adapter.resize_mode,
    ).train()
    _load(projected, official_d, _projected_key)
    patchgan = None
    if record["loss_kwargs"]["patchgan_discriminator_loss_weight"]:
        patchgan = MultiscalePatchGAN(steps["patchgan_ndf"]).train()
        _load(patchgan, official_d, _patchgan_key)
    official = record["loss_kwargs"]
    loss = LossConfig(
        l1=official["l1_pixel_loss_weight"],
        l2=official["l2_pixel_loss_weight"],
        lpips=official["perceptual_loss_weight"],
        ssim=official["ssim_loss_weight"],
        multiscale=tuple(official["multiscale_pixel_loss_weights"]),
        # the official window counts all images from stage 0 on; ours counts this stage's (recipes set it)
        multiscale_until_images=official["multiscale_pixel_loss_end_kimg"] * 1000 if record["resume_kimg"] == 0 else 0,
        kl=official["kl_loss_weight"],
        vf=official["vf_loss_weight"],
        vf_adaptive=official["use_adaptive_vf_loss"],
        gan=official["stylegan_t_discriminator_loss_weight"],
        patchgan=official["patchgan_discriminator_loss_weight"],
        feature_matching=official["feature_matching_loss_weight"],
        equivariance=official["use_equivariance_regularization"],
    )
    cfg = TokenizerTrainConfig(data=DataConfig(source=str(DATA)), model=model.config, loss=loss)
    objective = TokenizerObjective(
        cfg, model, projected, patchgan, lpips_net if loss.lpips else None, contextlib.nullcontext
    )
    discriminators = [m for m in (projected.heads, patchgan) if m is not None]

    # ---- the D pass (the generator frozen, as the official phase D)
    model.requires_grad_(False)
    result = objective.discriminator_pass(images, _draws(record["D"], tensors, "D", dino["img_size"]))
    result.total.backward()
    _assert_terms(result.terms, record["D"]["terms"], f"{stage} D")
    _assert_spectral(projected, tensors, "D")
    norms = record["D"]["grad_norms"]
    heads = [p.grad for p in projected.heads.parameters() if p.grad is not None]
    assert _norm(heads) == pytest.approx(norms["projected"], rel=GRAD_RTOL)
    if patchgan is not None:
        assert _norm(p.grad for p in patchgan.parameters()) == pytest.approx(norms["patchgan"], rel=GRAD_RTOL)
    for module in discriminators:
        module.requires_grad_(False)
    # the discriminator after the official Adam step (its weights; our spectral-norm vectors stay ours)
    stepped = {k[len("D.stepped.") :]: v for k, v in tensors.items() if k.startswith("D.stepped.")}
    _load(projected, stepped, _projected_key, strict=False)
    if patchgan is not None:
        _load(patchgan, stepped, _patchgan_key, strict=False)

    # ---- the G pass
    trainable = select_trainable(model, STAGE_OF_MODE[record["train_mode"]])
    assert sum(p.numel() for p in trainable) == record["trainable_numel"]  # the official stage's parameters
    result = objective.generator_pass(images, _draws(record["G"], tensors, "G", dino["img_size"]))
    result.total.backward()
    _assert_terms(result.terms, record["G"]["terms"], f"{stage} G")
    _assert_spectral(projected, tensors, "G")
    norms = record["G"]["grad_norms"]
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert _norm(grads.values()) == pytest.approx(norms["total"], rel=GRAD_RTOL)
    for group, prefixes in GROUPS.items():
        got = _norm(g for n, g in grads.items() if n.startswith(prefixes))
        assert got == pytest.approx(norms[group], rel=GRAD_RTOL, abs=1e-9), group
