"""Regenerate tests/data/reg_reference with the official REG / VFM-VAE / REPA code.

Procedure (tests/data/reg_reference/README.md): tiny SiT models of VFM-VAE's REG copy
(``tools/preprocess_for_reg/sit.py``) with a seeded perturbation, their forward pass, the REG ``SILoss`` with
every random draw recorded (eval and train mode), REG's Euler-Maruyama sampler, REPA's Euler ODE sampler as
the ODE stand-in, and a check of the VFM-VAE copy against upstream REG. Run in the reference environment:

    python scripts/parity/make_reg_reference.py --vfm-vae /tmp/vfmvae-parity/src/VFM-VAE \
        --official /tmp/vfmvae-parity/src/REG --repa /tmp/vfmvae-parity/src/REPA --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import types
from pathlib import Path
from typing import Any

import _common

NULL_CLASS = 10  # the tiny models have 10 classes; the samplers hard-code y_null = 1000
BASE_KWARGS = dict(
    input_size=8, in_channels=4, hidden_size=64, decoder_hidden_size=64, encoder_depth=2, depth=4, num_heads=4,
    mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, use_cfg=True, z_dims=[32], projector_dim=128,
)  # fmt: skip
REG_VARIANTS = {
    "reg_p1_qk": dict(patch_size=1, cls_token_dim=32, fused_attn=False, qk_norm=True),
    "reg_p2": dict(patch_size=2, cls_token_dim=32, fused_attn=False, qk_norm=False),
}
REPA_KWARGS = dict(patch_size=2, fused_attn=False, qk_norm=False)
OUTPUT_NAMES = [f"{v}.{ext}" for v in REG_VARIANTS for ext in ("safetensors", "json")] + [
    "reg_loss.safetensors", "reg_loss.json", "reg_sampler.safetensors", "reg_sampler.json", "check_upstream.txt",
]  # fmt: skip
PROJ_COEFF, CLS_WEIGHT = 0.5, 0.03  # VFM-VAE tools/preprocess_for_reg/train.py defaults


def load_file_module(path: Path, name: str, patch: tuple[str, str] | None = None) -> types.ModuleType:
    """Import one official file under a unique module name; ``patch`` optionally replaces one exact line of
    its text in memory first (the file on disk is untouched)."""
    if patch is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    old, new = patch
    source = path.read_text()
    if source.count(old) != 1:
        raise SystemExit(f"{path}: expected exactly one line '{old.strip()}' to patch")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(source.replace(old, new), str(path), "exec"), module.__dict__)
    return module


def build(sit_module: types.ModuleType, kwargs: dict) -> Any:
    import torch

    torch.manual_seed(0)
    model = sit_module.SiT(**kwargs)
    _common.perturb_parameters(model, seed=123)
    return model.eval()


def remap_null(model: Any) -> Any:
    """The samplers use y_null = 1000; the tiny models' null class is 10."""

    def call(x: Any, t: Any, y: Any, **kwargs: Any) -> Any:
        return model(x, t, y=y.masked_fill(y == 1000, NULL_CLASS), **kwargs)

    return call


def forward_record(model: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(1)
    x = torch.randn(3, 4, 8, 8)
    cls = torch.randn(3, 32)
    t = torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([0, 7, NULL_CLASS])
    with torch.no_grad():
        out, zs, cls_out = model(x, t, y=y, cls_token=cls)
    return {"input.x": x, "input.t": t, "input.y": y, "input.cls": cls,
            "output.x": out, "output.zs0": zs[0], "output.cls": cls_out}  # fmt: skip


class RecordingModel:
    """Stands in for the model inside SILoss: records what the loss feeds it and what it returns."""

    def __init__(self, model: Any):
        self.model, self.calls = model, []

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, x: Any, t: Any, **kwargs: Any) -> Any:
        result = self.model(x, t, **kwargs)
        self.calls.append(dict(x=x, t=t, y=kwargs["y"], cls=kwargs["cls_token"], result=result))
        return result


class DrawRecorder:
    """Wraps torch's random functions so that every draw is kept in call order."""

    def __init__(self, names: tuple[str, ...]):
        self.names, self.draws, self._saved = names, [], []

    def __enter__(self) -> DrawRecorder:
        import torch

        for name in self.names:
            original = getattr(torch, name)
            self._saved.append((name, original))

            def recorded(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                value = _original(*args, **kwargs)
                self.draws.append((_name, value))
                return value

            setattr(torch, name, recorded)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        for name, original in reversed(self._saved):
            setattr(torch, name, original)


def loss_record(loss_module: types.ModuleType, model: Any, upstream_loss: types.ModuleType) -> tuple[dict, dict]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(2)
    x = torch.randn(3, 4, 8, 8)
    zs0 = torch.randn(3, 65, 32)
    cls_token = zs0[:, 0]
    y = torch.tensor([0, 7, NULL_CLASS])
    rec: dict[str, Any] = {"input.x": x, "input.y": y, "input.zs0": zs0, "input.cls_token": cls_token}
    meta: dict[str, Any] = {"loss_settings": dict(prediction="v", path_type="linear", weighting="uniform"),
                            "proj_coeff": PROJ_COEFF, "cls_weight": CLS_WEIGHT}  # fmt: skip

    def run(module: types.ModuleType, train: bool, seed: int) -> tuple[Any, RecordingModel, DrawRecorder, list]:
        loss_fn = module.SILoss(prediction="v", path_type="linear", weighting="uniform")
        model.train(train)
        recording, dropped = RecordingModel(model), []
        token_drop = model.y_embedder.token_drop

        def recording_token_drop(labels: Any, force_drop_ids: Any = None) -> Any:
            dropped.append(token_drop(labels, force_drop_ids))
            return dropped[-1]

        model.y_embedder.token_drop = recording_token_drop
        try:
            torch.manual_seed(seed)
            with torch.no_grad(), DrawRecorder(("rand", "randn_like", "randn")) as draws:
                result = loss_fn(recording, x, dict(y=y), zs=[zs0], cls_token=cls_token, time_input=None, noises=None)
        finally:
            del model.y_embedder.token_drop
            model.eval()
        return result, recording, draws, dropped

    for prefix, train, seed in (("eval", False, 5), ("train", True, 8)):
        (denoise, proj, time_input, noise_x, denoise_cls), recording, draws, dropped = run(loss_module, train, seed)
        upstream = run(upstream_loss, train, seed)[0]
        (call,) = recording.calls
        out_x, out_zs, out_cls = call["result"]
        noise_cls = draws.draws[2][1]
        rec.update({
            f"{prefix}.t": draws.draws[0][1], f"{prefix}.noise_x": noise_x, f"{prefix}.noise_cls": noise_cls,
            f"{prefix}.x_t": call["x"], f"{prefix}.cls_t": call["cls"], f"{prefix}.model_t": call["t"],
            f"{prefix}.model_y": call["y"],
            f"{prefix}.target_x": noise_x - x, f"{prefix}.target_cls": noise_cls - cls_token,
            f"{prefix}.out.x": out_x, f"{prefix}.out.zs0": out_zs[0], f"{prefix}.out.cls": out_cls,
            f"{prefix}.loss.denoise_per_sample": denoise, f"{prefix}.loss.cls_per_sample": denoise_cls,
            f"{prefix}.loss.proj_per_sample":
                -(F.normalize(zs0, dim=-1) * F.normalize(out_zs[0], dim=-1)).sum(dim=-1).mean(dim=-1),
            f"{prefix}.loss.proj": torch.as_tensor(proj), f"{prefix}.loss.denoise_mean": denoise.mean(),
            f"{prefix}.loss.proj_weighted": proj.mean() * PROJ_COEFF,
            f"{prefix}.loss.cls_weighted": denoise_cls.mean() * CLS_WEIGHT,
        })  # fmt: skip
        # Summed in the order tools/preprocess_for_reg/train.py uses: loss_mean + proj_loss_mean + loss_mean_cls.
        rec[f"{prefix}.loss.total"] = (
            rec[f"{prefix}.loss.denoise_mean"]
            + rec[f"{prefix}.loss.proj_weighted"]
            + rec[f"{prefix}.loss.cls_weighted"]
        )
        if train:
            rec["train.label_drop_rand"] = draws.draws[3][1]
            rec["train.y_effective"] = dropped[0]
        ours = (denoise, torch.as_tensor(proj), denoise_cls)
        theirs = (upstream[0], torch.as_tensor(upstream[1]), upstream[4])
        meta[prefix] = {
            "loss_call_seed": seed,
            "draw_order": [f"{name}{tuple(value.shape)}" for name, value in draws.draws],
            "total": rec[f"{prefix}.loss.total"].item(),
            "upstream_REG_loss_py_identical": all(torch.equal(a, b) for a, b in zip(ours, theirs)),
        }
    return rec, meta


def sampler_record(reg_samplers: Any, reg_samplers_with_cls: Any, repa_samplers: Any, model: Any, repa: Any) -> tuple:
    import torch

    torch.manual_seed(3)
    z = torch.randn(2, 4, 8, 8)
    torch.manual_seed(4)
    cls_z = torch.randn(2, 32)
    y = torch.tensor([1, 5])
    rec: dict[str, Any] = {"input.z": z, "input.cls_z": cls_z, "input.y": y}
    # Local variables of the samplers, rebuilt with the samplers' own formulas.
    f64 = torch.float64
    rec["sde.t_steps"] = torch.cat([torch.linspace(1.0, 0.04, 10, dtype=f64), torch.zeros(1, dtype=f64)])
    rec["ode.t_steps"] = torch.linspace(1, 0, 11, dtype=torch.float64)
    meta: dict[str, Any] = {"num_steps": 10}
    for scale in (4.0, 1.0):
        name = f"sde_cfg{int(scale)}"
        kwargs = dict(latents=z, y=y, num_steps=10, heun=False, cfg_scale=scale, guidance_low=0.0, guidance_high=0.8,
                      path_type="linear", cls_latents=cls_z, args=argparse.Namespace(cls_cfg_scale=4.0))  # fmt: skip
        torch.manual_seed(7)
        with DrawRecorder(("randn_like",)) as draws:
            out_x, out_cls = reg_samplers_with_cls.euler_maruyama_sampler(remap_null(model), **kwargs)
        torch.manual_seed(7)
        unpatched = reg_samplers.euler_maruyama_sampler(remap_null(model), **kwargs)
        eps = [value for _, value in draws.draws]
        # Per step the sampler draws the latent noise first, then the class-token noise.
        rec[f"{name}.eps_x"], rec[f"{name}.eps_cls"] = torch.stack(eps[0::2]), torch.stack(eps[1::2])
        rec[f"{name}.out.x"], rec[f"{name}.out.cls"] = out_x, out_cls
        rec[f"{name}.out.x_f32"] = out_x.to(torch.float32)  # what tools/preprocess_for_reg/sample.py keeps
        meta[name] = {"sampler_call_seed": 7, "upstream_unpatched_latent_identical": torch.equal(unpatched, out_x)}
    for scale in (4.0, 1.0):
        name = f"repa_ode_cfg{int(scale)}"
        rec[f"{name}.out.x"] = repa_samplers.euler_sampler(
            remap_null(repa), z, y, num_steps=10, heun=False, cfg_scale=scale,
            guidance_low=0.0, guidance_high=0.8, path_type="linear",
        )  # fmt: skip
    return rec, meta


def check_upstream(vfm_sit: Any, reg_sit: Any, model_p1_qk: Any) -> str:
    """The VFM-VAE copy of REG's sit.py against upstream REG (see the README's 'Other')."""
    import torch

    lines = []
    torch.manual_seed(1)
    x, cls = torch.randn(3, 4, 8, 8), torch.randn(3, 32)
    t, y = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 7, NULL_CLASS])
    for patch in (1, 2):
        for fused in (False, True):
            kwargs = {**BASE_KWARGS, "patch_size": patch, "cls_token_dim": 32, "fused_attn": fused, "qk_norm": False}
            a, b = build(vfm_sit, kwargs), build(reg_sit, kwargs)
            sa, sb = a.state_dict(), b.state_dict()
            same_state = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            with torch.no_grad():
                oa, ob = a(x, t, y=y, cls_token=cls), b(x, t, y=y, cls_token=cls)
            same_out = torch.equal(oa[0], ob[0]) and torch.equal(oa[2], ob[2]) and torch.equal(oa[1][0], ob[1][0])
            lines.append(f"patch={patch} fused_attn={fused}: state_dict identical={same_state}, "
                         f"outputs bitwise identical={same_out}")  # fmt: skip
    fused = build(vfm_sit, {**BASE_KWARGS, **REG_VARIANTS["reg_p1_qk"], "fused_attn": True})
    with torch.no_grad():
        of, om = fused(x, t, y=y, cls_token=cls), model_p1_qk(x, t, y=y, cls_token=cls)
    lines.append(f"p1_qk fused vs manual attention max|diff| x: {(of[0] - om[0]).abs().max().item()} "
                 f"cls: {(of[2] - om[2]).abs().max().item()}")  # fmt: skip
    try:
        build(reg_sit, {**BASE_KWARGS, **REG_VARIANTS["reg_p1_qk"]})
        lines.append("upstream REG qk_norm=True builds (timm without the norm_layer assertion)")
    except AssertionError as err:
        lines.append(f"upstream REG qk_norm=True fails: AssertionError {err}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0], "checkout of Martinser/REG at 021ea2e")
    p.add_argument("--vfm-vae", type=Path, required=True, help="checkout of tianciB/VFM-VAE at b3a752a")
    p.add_argument("--repa", type=Path, required=True, help="checkout of sihyun-yu/REPA at 67f7145")
    args = p.parse_args()
    reg = _common.check_folder(args.official, "samplers.py", "--official")
    vfm_vae = _common.check_folder(args.vfm_vae, "tools/preprocess_for_reg/sit.py", "--vfm-vae")
    vfm_reg = vfm_vae / "tools" / "preprocess_for_reg"
    repa = _common.check_folder(args.repa, "models/sit.py", "--repa")
    out = _common.prepare_out(args.out, OUTPUT_NAMES)
    _common.pin_runtime()

    vfm_sit = load_file_module(vfm_reg / "sit.py", "vfm_reg_sit")
    vfm_loss = load_file_module(vfm_reg / "loss.py", "vfm_reg_loss")
    reg_sit = load_file_module(reg / "models" / "sit.py", "reg_sit")
    reg_loss = load_file_module(reg / "loss.py", "reg_loss")
    reg_samplers = load_file_module(reg / "samplers.py", "reg_samplers")
    # Same file with the class-token result returned too, so that it can be saved.
    reg_samplers_with_cls = load_file_module(
        reg / "samplers.py", "reg_samplers_with_cls", patch=("    return mean_x\n", "    return mean_x, cls_mean_x\n")
    )
    repa_sit = load_file_module(repa / "models" / "sit.py", "repa_sit")
    repa_samplers = load_file_module(repa / "samplers.py", "repa_samplers")
    env = _common.versions("torch", "timm", "numpy")

    models = {}
    for variant, extra in REG_VARIANTS.items():
        kwargs = {**BASE_KWARGS, **extra}
        models[variant] = model = build(vfm_sit, kwargs)
        state = {f"state.{k}": v for k, v in model.state_dict().items()}
        _common.save_tensors(out / f"{variant}.safetensors", state | forward_record(model))
        _common.save_json(out / f"{variant}.json", {
            "reference": "tianciB/VFM-VAE@b3a752a tools/preprocess_for_reg/sit.py, class SiT",
            "constructor_kwargs": kwargs, "state_dict_keys_in_order": list(model.state_dict()), **env})  # fmt: skip

    loss_rec, loss_meta = loss_record(vfm_loss, models["reg_p1_qk"], reg_loss)
    _common.save_tensors(out / "reg_loss.safetensors", loss_rec)
    _common.save_json(out / "reg_loss.json", {"model": "reg_p1_qk", **loss_meta, **env})

    repa_model = build(repa_sit, {**BASE_KWARGS, **REPA_KWARGS})
    sampler_rec, sampler_meta = sampler_record(
        reg_samplers, reg_samplers_with_cls, repa_samplers, models["reg_p1_qk"], repa_model
    )
    _common.save_tensors(out / "reg_sampler.safetensors", sampler_rec)
    _common.save_json(out / "reg_sampler.json", {"model": "reg_p1_qk; ODE: REPA SiT p2", **sampler_meta, **env})

    (out / "check_upstream.txt").write_text(check_upstream(vfm_sit, reg_sit, models["reg_p1_qk"]))
    print(f"wrote {out} ({env})")


if __name__ == "__main__":
    main()
