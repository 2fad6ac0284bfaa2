"""Parity with the official LightningDiT and REG code, on reference tensors produced outside the repo.

tests/data/lightningdit_reference/ and tests/data/reg_reference/ (see their README.md) hold tiny models of the
official classes with perturbed random weights, their inputs and outputs. Our converter imports the weights and
our model must reproduce the outputs in float32 on CPU.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmvae.diffusion import TransportConfig, training_loss
from vfmvae.diffusion.convert import convert_official_diffusion

LDIT = Path(__file__).parent / "data" / "lightningdit_reference"
REG = Path(__file__).parent / "data" / "reg_reference"
TOL = dict(rtol=1e-5, atol=2e-5)  # thread count alone moves outputs by ~5e-6


def _official_file(tmp_path, ref: dict, name: str) -> Path:
    """The reference state dict as an official training checkpoint (.pt with ema/model entries, DDP prefix)."""
    state = {f"module.{k[6:]}": v for k, v in ref.items() if k.startswith("state.")}
    path = tmp_path / f"{name}.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 7}, path)
    return path


def _ldit(tmp_path, variant):
    ref = load_file(LDIT / f"lightningdit_{variant}.safetensors")
    kw = json.loads((LDIT / f"lightningdit_{variant}.json").read_text())["constructor_kwargs"]
    overrides = dict(depth=kw["depth"], hidden_size=kw["hidden_size"], num_heads=kw["num_heads"])
    if not kw["use_swiglu"]:
        overrides.update(norm="layernorm", mlp="gelu", qk_norm="none", rope=False)
    model = convert_official_diffusion(
        _official_file(tmp_path, ref, variant), "lightningdit", "lightningdit-tiny", tmp_path / variant, **overrides
    )
    return model, ref, kw


@pytest.mark.parametrize("variant", ["p1", "p2", "p2_plain"])
def test_lightningdit_forward_matches_official(tmp_path, variant):
    model, ref, kw = _ldit(tmp_path, variant)
    assert model.config.patch_size == kw["patch_size"] and model.config.in_channels == kw["in_channels"]
    with torch.no_grad():
        native = model.forward_native(ref["input.x"], ref["input.t"], ref["input.y"]).sample
        ours = model(ref["input.x"], 1 - ref["input.t"], ref["input.y"]).sample  # package convention
    torch.testing.assert_close(native, ref["output.out"], **TOL)
    torch.testing.assert_close(-ours, ref["output.out"], **TOL)


@pytest.mark.parametrize("case", ["lognorm", "uniform"])
def test_lightningdit_training_loss_matches_official(tmp_path, case):
    """MSE and cosine velocity losses for the official draws (their t is 1 - ours; their x0 is our noise)."""
    model, _, _ = _ldit(tmp_path, "p1")
    ref = load_file(LDIT / "transport_loss.safetensors")
    t = ref[f"{case}.t"]
    with torch.no_grad():
        terms = training_loss(
            model, ref["input.x1"], ref["input.y"], TransportConfig(cosine_weight=1.0), t=1 - t, noise=ref[f"{case}.x0"]
        )
    torch.testing.assert_close(terms.mse, ref[f"{case}.loss"], **TOL)
    torch.testing.assert_close(terms.cosine, ref[f"{case}.cos_loss"], **TOL)
    torch.testing.assert_close(terms.loss.mean(), ref[f"{case}.total"], **TOL)
    if case == "lognorm":  # their t = sigmoid(n): ours, 1 - sigmoid(n) = sigmoid(-n), has the same law
        torch.testing.assert_close(t, torch.sigmoid(ref["lognorm.draw1.rvs"]).float(), **TOL)


def test_converter_rejects_mismatched_architectures(tmp_path):
    from vfmvae.checkpoint.serialize import CheckpointFormatError

    ref = load_file(LDIT / "lightningdit_p1.safetensors")
    path = _official_file(tmp_path, ref, "p1")
    with pytest.raises(CheckpointFormatError, match="unexpected keys: blocks.1"):
        convert_official_diffusion(path, "lightningdit", "lightningdit-tiny", depth=1, hidden_size=64, num_heads=4)
    with pytest.raises(CheckpointFormatError, match="unexpected keys: blocks.0.attn.k_norm.weight"):
        convert_official_diffusion(path, "lightningdit", "lightningdit-tiny", qk_norm="none")
    with pytest.raises(ValueError, match="not a sit architecture"):
        convert_official_diffusion(path, "reg", "lightningdit-tiny")
    with pytest.raises(CheckpointFormatError, match="no 'ema' entry"):
        torch.save({"model": {}, "opt": {}}, tmp_path / "bad.pt")
        convert_official_diffusion(tmp_path / "bad.pt", "lightningdit", "lightningdit-tiny")


def _reg(tmp_path, variant):
    ref = {k: v.clone() for k, v in load_file(REG / f"reg_{variant}.safetensors").items()}  # aligned copies
    kw = json.loads((REG / f"reg_{variant}.json").read_text())["constructor_kwargs"]
    overrides = dict(
        depth=kw["depth"],
        hidden_size=kw["hidden_size"],
        num_heads=kw["num_heads"],
        align_depth=kw["encoder_depth"],
        qk_norm="layernorm" if kw["qk_norm"] else "none",
    )
    model = convert_official_diffusion(
        _official_file(tmp_path, ref, variant), "reg", "reg-sit-tiny", tmp_path / variant, **overrides
    )
    return model, ref, kw


@pytest.mark.parametrize("variant", ["p1_qk", "p2"])
def test_reg_forward_matches_official(tmp_path, variant):
    model, ref, kw = _reg(tmp_path, variant)
    c = model.config  # read from the weights: class-token width, projector width and target width
    assert (c.class_token_dim, c.projector_dim, c.align_dims, c.patch_size) == (32, 128, (32,), kw["patch_size"])
    with torch.no_grad():
        out = model(ref["input.x"], ref["input.t"], ref["input.y"], ref["input.cls"])
    torch.testing.assert_close(out.sample, ref["output.x"], **TOL)
    torch.testing.assert_close(out.cls, ref["output.cls"], **TOL)
    torch.testing.assert_close(out.projected[0], ref["output.zs0"], **TOL)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_reg_training_loss_matches_official(tmp_path, mode):
    """Latent MSE, class-token MSE and the projection loss over all 1 + N tokens, combined as REG's train.py does."""
    model, _, _ = _reg(tmp_path, "p1_qk")
    ref = {k: v.clone() for k, v in load_file(REG / "reg_loss.safetensors").items()}
    p = f"{mode}."
    cfg = TransportConfig(align_weight=0.5, cls_weight=0.03)
    if mode == "train":  # replay the model's label drop: sample 0 was dropped to the null class
        assert ref["train.y_effective"].tolist() == [10, 7, 10]
        y = ref["train.y_effective"]
    else:
        y = ref["input.y"]
    with torch.no_grad():
        terms = training_loss(
            model,
            ref["input.x"],
            y,
            cfg,
            t=ref[p + "t"].flatten(),
            noise=ref[p + "noise_x"],
            cls_noise=ref[p + "noise_cls"],
            cls_target=ref["input.cls_token"],
            align_targets=[ref["input.zs0"]],
        )
    torch.testing.assert_close(terms.mse, ref[p + "loss.denoise_per_sample"], **TOL)
    torch.testing.assert_close(terms.cls, ref[p + "loss.cls_per_sample"], **TOL)
    torch.testing.assert_close(terms.align.mean(), ref[p + "loss.proj"], **TOL)
    torch.testing.assert_close(terms.loss.mean(), ref[p + "loss.total"], **TOL)


def test_reg_time_convention_is_the_package_one():
    """REG's x_t = (1 - t) x + t eps with target eps - x is ours: no conversion for REG models."""
    from vfmvae.diffusion.transport import interpolate

    ref = load_file(REG / "reg_loss.safetensors")
    x_t, v = interpolate(ref["input.x"], ref["eval.noise_x"], ref["eval.t"].flatten())
    torch.testing.assert_close(x_t, ref["eval.x_t"], **TOL)
    torch.testing.assert_close(v, ref["eval.target_x"], **TOL)


# ------------------------------------------------------------------------------------------------------------
# samplers


@pytest.mark.parametrize("case", ["cfg", "cfg_nointerval", "nocfg"])
def test_lightningdit_euler_ode_sampler_matches_official(tmp_path, case):
    """LightningDiT: 10 grid points (9 Euler steps), timestep_shift 0.3 (= our shift 1/0.3), CFG 4 on channels 0-2
    only (the compatibility switch), guidance off while its t < 0.125 (our t > 0.875)."""
    from vfmvae.sampling import Guidance, sample_ode, time_grid

    model, _, _ = _ldit(tmp_path, "p1")
    ref = load_file(LDIT / "sampler_ode.safetensors")
    grid = time_grid(9, shift=1 / 0.3)
    torch.testing.assert_close(1 - grid.float(), ref["grid"], rtol=0, atol=1e-6)
    if case == "nocfg":
        guidance = Guidance()
    else:
        guidance = Guidance(scale=4.0, channels=3, interval=(0.0, 0.875) if case == "cfg" else (0.0, 1.0))
    out = sample_ode(model, ref["input.z"], ref["input.y"], steps=9, shift=1 / 0.3, guidance=guidance)
    torch.testing.assert_close(out, ref[f"{case}.final"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["sde_cfg4", "sde_cfg1"])
def test_reg_euler_maruyama_sampler_matches_official(tmp_path, case):
    """REG's SDE sampler with its recorded step noises: 10 steps, CFG 4 (latent and class token) for t <= 0.8."""
    from vfmvae.sampling import Guidance, sample_sde, sde_grid

    model, _, _ = _reg(tmp_path, "p1_qk")
    ref = load_file(REG / "reg_sampler.safetensors")
    torch.testing.assert_close(sde_grid(10), ref["sde.t_steps"])
    scale = 4.0 if case == "sde_cfg4" else 1.0
    out = sample_sde(
        model,
        ref["input.z"],
        ref["input.y"],
        steps=10,
        cls_noise=ref["input.cls_z"],
        guidance=Guidance(scale=scale, cls_scale=scale, interval=(0.0, 0.8)),
        step_noise=lambda i: (ref[f"{case}.eps_x"][i], ref[f"{case}.eps_cls"][i]),
    )
    torch.testing.assert_close(out, ref[f"{case}.out.x"], rtol=1e-4, atol=1e-4)
