"""Regenerate tests/data/lightningdit_reference with the official LightningDiT code.

Procedure (tests/data/lightningdit_reference/README.md): three tiny LightningDiT models with a seeded
perturbation, plain and CFG forwards on seeded inputs, the transport training loss with every random draw
recorded, and the Euler ODE sampler with and without CFG. Run in the reference environment with the pinned
timm 1.0.12 first on the path (see README.md here):

    PYTHONPATH=/tmp/vfmvae-parity/pylib_timm1012 python scripts/parity/make_lightningdit_reference.py \
        --official /tmp/vfmvae-parity/src/LightningDiT --out DIR
"""

from __future__ import annotations

import sys
import types
from typing import Any

import _common

COMMIT = "2725fed (hustvl/LightningDiT)"
NULL_CLASS = 10
BASE_KWARGS = dict(
    input_size=8, in_channels=4, hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0,
    class_dropout_prob=0.1, num_classes=10, learn_sigma=False, wo_shift=False,
)  # fmt: skip
FEATURES_ON = dict(use_qknorm=True, use_swiglu=True, use_rope=True, use_rmsnorm=True)
FEATURES_OFF = dict(use_qknorm=False, use_swiglu=False, use_rope=False, use_rmsnorm=False)
VARIANTS = {
    "lightningdit_p1": dict(patch_size=1, **FEATURES_ON),
    "lightningdit_p2": dict(patch_size=2, **FEATURES_ON),
    "lightningdit_p2_plain": dict(patch_size=2, **FEATURES_OFF),
}
OUTPUT_NAMES = [f"{v}.{ext}" for v in VARIANTS for ext in ("safetensors", "json")] + [
    "transport_loss.safetensors", "sampler_ode.safetensors", "transport_sampler_meta.json",
]  # fmt: skip


def stub_fairscale() -> None:
    """models/rmsnorm.py imports fairscale's model-parallel layers at module level but RMSNorm uses none of
    them; empty stand-ins let the module import without installing fairscale."""
    names = ["fairscale", "fairscale.nn", "fairscale.nn.model_parallel",
             "fairscale.nn.model_parallel.initialize", "fairscale.nn.model_parallel.layers"]  # fmt: skip
    for name in names:
        sys.modules.setdefault(name, types.ModuleType(name))
    layers = sys.modules["fairscale.nn.model_parallel.layers"]
    for attr in ("ColumnParallelLinear", "ParallelEmbedding", "RowParallelLinear"):
        setattr(layers, attr, type(attr, (), {}))


def build_model(lightningdit: Any, extra: dict) -> tuple[Any, list[str]]:
    import torch

    torch.manual_seed(0)
    model = lightningdit.LightningDiT(**BASE_KWARGS, **extra)
    touched = _common.perturb_parameters(model, seed=123)
    return model.eval(), touched


def model_calls(model: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(1)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([0, 7, NULL_CLASS])
    x2, y2 = torch.cat([x, x]), torch.cat([y, torch.full((3,), NULL_CLASS)])
    t2 = torch.cat([t, t])
    rec = {"input.x": x, "input.t": t, "input.y": y, "cfg.x": x2, "cfg.y": y2, "cfg.t": t2}
    with torch.no_grad():
        rec["output.out"] = model(x, t, y)
        rec["output.cfg"] = model.forward_with_cfg(x2, t2, y2, 4.0)
        rec["output.raw_doubled"] = model(x2, t2, y2)
        for t_star in (0.05, 0.5):
            ts = torch.full((6,), t_star)
            rec[f"cfg.t_{t_star}"] = ts
            rec[f"output.cfg_interval_t{t_star}"] = model.forward_with_cfg(
                x2, ts, y2, 4.0, cfg_interval=True, cfg_interval_start=0.125
            )
            rec[f"output.raw_doubled_t{t_star}"] = model(x2, ts, y2)
        rec["output.cfg_nointerval_t0.05"] = model.forward_with_cfg(
            x2, rec["cfg.t_0.05"], y2, 4.0, cfg_interval=False, cfg_interval_start=0.125
        )
    return rec


class DrawRecorder:
    """Wraps the random sources the transport uses so that every draw is saved in call order."""

    def __init__(self, transport_module: Any):
        import torch

        self.draws: list[tuple[str, Any]] = []
        self._targets = [(torch, "randn_like"), (torch, "rand"), (torch, "randn"), (transport_module.norm, "rvs")]
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> DrawRecorder:
        for owner, name in self._targets:
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(name, original))
        return self

    def _wrap(self, name: str, original: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            value = original(*args, **kwargs)
            self.draws.append((name, value))
            return value

        return recorded

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def transport_losses(transport_pkg: Any, transport_module: Any, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np
    import torch

    rec: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for case, lognorm in (("lognorm", True), ("uniform", False)):
        transport = transport_pkg.create_transport(
            "Linear", "velocity", None, None, None, use_cosine_loss=True, use_lognorm=lognorm
        )
        torch.manual_seed(2)
        x1 = torch.randn(3, 4, 8, 8)
        y = torch.tensor([0, 7, NULL_CLASS])
        np.random.seed(2)
        planned: dict[str, Any] = {}
        plan = transport.path_sampler.plan

        def capture_plan(t: Any, x0: Any, x1_: Any, plan=plan, planned=planned) -> Any:
            t_, xt, ut = plan(t, x0, x1_)
            planned.update(t=t_, x0=x0, xt=xt, ut=ut)
            return t_, xt, ut

        transport.path_sampler.plan = capture_plan
        with torch.no_grad(), DrawRecorder(transport_module) as recorder:
            terms = transport.training_losses(model, x1, dict(y=y))
        rec["input.x1"], rec["input.y"] = x1, y
        for i, (name, value) in enumerate(recorder.draws):
            rec[f"{case}.draw{i}.{name}"] = torch.as_tensor(value)
        for key in ("t", "x0", "xt", "ut"):
            rec[f"{case}.{key}"] = planned[key]
        for key in ("pred", "loss", "cos_loss"):
            rec[f"{case}.{key}"] = terms[key]
        rec[f"{case}.total"] = terms["cos_loss"].mean() + terms["loss"].mean()
        meta[case] = {
            "use_lognorm": lognorm,
            "draws_in_order": [name for name, _ in recorder.draws],
            "terms_keys": sorted(terms),
            "train_eps": transport.train_eps,
            "sample_eps": transport.sample_eps,
        }
    return rec, meta


def ode_samples(transport_pkg: Any, model: Any) -> dict[str, Any]:
    import torch

    transport = transport_pkg.create_transport(
        "Linear", "velocity", None, None, None, use_cosine_loss=True, use_lognorm=True
    )
    sample_fn = transport_pkg.Sampler(transport).sample_ode(
        sampling_method="euler", num_steps=10, atol=1e-6, rtol=1e-3, reverse=False, timestep_shift=0.3
    )
    torch.manual_seed(3)
    z = torch.randn(2, 4, 8, 8)
    y = torch.tensor([1, 5])
    rec: dict[str, Any] = {"input.z": z, "input.y": y, "grid": sample_fn.__self__.t}

    def traced(fn: Any, calls: list) -> Any:
        def call(x: Any, t: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(t[0].clone())
            return fn(x, t, *args, **kwargs)

        return call

    y_cfg = torch.cat([y, torch.full((2,), NULL_CLASS)])
    with torch.no_grad():
        for name, interval in (("cfg", True), ("cfg_nointerval", False)):
            calls: list = []
            traj = sample_fn(
                torch.cat([z, z]), traced(model.forward_with_cfg, calls), y=y_cfg,
                cfg_scale=4.0, cfg_interval=interval, cfg_interval_start=0.125,
            )  # fmt: skip
            rec.update({f"{name}.traj": traj, f"{name}.final": traj[-1].chunk(2)[0]})
            rec.update({f"{name}.final_full": traj[-1], f"{name}.y": y_cfg, f"{name}.model_t": torch.stack(calls)})
        calls = []
        traj = sample_fn(z, traced(model.forward, calls), y=y)
        rec.update({"nocfg.traj": traj, "nocfg.final": traj[-1], "nocfg.model_t": torch.stack(calls)})
    return rec


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0], "checkout of hustvl/LightningDiT at 2725fed")
    args = p.parse_args()
    official = _common.check_folder(args.official, "models/lightningdit.py", "--official")
    out = _common.prepare_out(args.out, OUTPUT_NAMES)
    _common.pin_runtime()
    stub_fairscale()
    lightningdit = _common.import_from(official, "models.lightningdit")
    transport_pkg = _common.import_from(official, "transport")
    transport_module = _common.import_from(official, "transport.transport")
    env = {**_common.versions("torch", "timm", "numpy", "scipy", "torchdiffeq"), "commit": COMMIT}

    models = {}
    for variant, extra in VARIANTS.items():
        model, touched = build_model(lightningdit, extra)
        models[variant] = model
        tensors = {f"state.{k}": v for k, v in model.state_dict().items()} | model_calls(model)
        _common.save_tensors(out / f"{variant}.safetensors", tensors)
        untouched = [n for n, _ in model.named_parameters() if n not in touched]
        _common.save_json(
            out / f"{variant}.json",
            {"constructor_kwargs": {**BASE_KWARGS, **extra}, "perturbed_params": touched,
             "not_perturbed_params_no_rng_draw": untouched, "mode": "eval", **env},
        )  # fmt: skip

    loss_rec, loss_meta = transport_losses(transport_pkg, transport_module, models["lightningdit_p1"])
    _common.save_tensors(out / "transport_loss.safetensors", loss_rec)
    sampler_rec = ode_samples(transport_pkg, models["lightningdit_p1"])
    _common.save_tensors(out / "sampler_ode.safetensors", sampler_rec)
    _common.save_json(
        out / "transport_sampler_meta.json",
        {"transport": {"model": "lightningdit_p1 (eval mode)", "cases": loss_meta},
         "sampler": {"grid": sampler_rec["grid"].tolist()}, **env},
    )  # fmt: skip
    print(f"wrote {out} ({env})")


if __name__ == "__main__":
    main()
