"""Regenerate tests/data/official_tokenizer_steps with the official VFM-VAE training code.

Procedure (tests/data/official_tokenizer_steps/README.md): the tiny official generator of
tests/data/official_tokenizer_tiny, a tiny projected discriminator (random DINO ViT of width 16, input 48 px) and
a PatchGAN, and the official `training.loss.TotalLoss` with each stage's loss settings. Per stage 0-3: one D
phase (`accumulate_gradients('D')`, then the discriminator's Adam step), then one G phase, every random draw fixed
or recorded. Run in the reference environment (see README.md here):

    python scripts/parity/make_official_tokenizer_steps.py --official /tmp/vfmvae-parity/src/VFM-VAE --out DIR

The official code runs unmodified. The script only replaces its sources of randomness and of downloads, from the
outside: the equivariance transform returns the draw chosen below; the posterior noise, DiffAugment's numbers and
the discriminator's crop are drawn from seeded global generators and recorded on the way (wrappers around the
modules' `torch`, `np` and `RandomCrop` names); `timm.create_model` builds the tiny DINO instead of downloading
the pretrained one; LPIPS gets a random VGG16 and deterministic weights instead of downloaded ones; `open_clip`
(imported by the loss module, unused without a CLIP loss) is an empty stub; `training_stats.report` and
`Tensor.backward` are observed to record the terms and the totals.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import _common

REPO_DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
TINY = REPO_DATA / "official_tokenizer_tiny"
OUTPUT_NAMES = ["steps.json", "images.safetensors", "discriminator.safetensors"] + [
    f"stage{k}.safetensors" for k in range(4)
]

# 64 px, the tiny generator's size: its first synthesis block pixel-unshuffles the latent by 4, so only the
# equivariance scale 1 can be decoded from the 4 x 4 latent (the draws below turn and pick branches instead)
BATCH, IMAGE_SIZE = 2, 64
DINO = dict(img_size=48, embed_dim=16, depth=12, num_heads=2)  # hooks at blocks 2, 5, 8, 11 as the official
PATCHGAN_NDF = 4
LPIPS_SEED = 11
# the official stage configs (configs/vfm_vae_f16d32_siglip2_stage_*.yaml, loss_kwargs and the optimizers' lr),
# with each stage's first image count (resume_kimg): the safe-loss check is not active yet, the multi-scale window
# only in stage 0
STAGES = [
    dict(
        name="stage0",
        train_mode="train_all",
        resume_kimg=0,
        lr=1e-4,
        patchgan=False,
        loss=dict(
            kl_loss_weight=1e-6,
            vf_loss_weight=5.0,
            use_adaptive_vf_loss=True,
            l1_pixel_loss_weight=1.0,
            perceptual_loss_weight=10.0,
            ssim_loss_weight=0.0,
            stylegan_t_discriminator_loss_weight=1.0,
            patchgan_discriminator_loss_weight=0.0,
            feature_matching_loss_weight=0.0,
            use_equivariance_regularization=True,
        ),
        # (scale, quarter turns, is_eq_prior) per phase: a turned latent, then the VFM-input branch
        equivariance={"D": (1.0, 1, False), "G": (1.0, 0, True)},
    ),
    dict(
        name="stage1",
        train_mode="train_all",
        resume_kimg=20000,
        lr=1e-4,
        patchgan=False,
        loss=dict(
            kl_loss_weight=1e-6,
            vf_loss_weight=1.0,
            use_adaptive_vf_loss=True,
            l1_pixel_loss_weight=1.0,
            perceptual_loss_weight=10.0,
            ssim_loss_weight=0.0,
            stylegan_t_discriminator_loss_weight=1.0,
            patchgan_discriminator_loss_weight=0.0,
            feature_matching_loss_weight=0.0,
            use_equivariance_regularization=True,
        ),
        equivariance={"D": (1.0, 2, False), "G": (1.0, 3, False)},
    ),
    dict(
        name="stage2",
        train_mode="train_decoder",
        resume_kimg=40000,
        lr=5e-5,
        patchgan=False,
        loss=dict(
            kl_loss_weight=0.0,
            vf_loss_weight=0.0,
            use_adaptive_vf_loss=False,
            l1_pixel_loss_weight=1.0,
            perceptual_loss_weight=2.0,
            ssim_loss_weight=1.0,
            stylegan_t_discriminator_loss_weight=1.0,
            patchgan_discriminator_loss_weight=0.0,
            feature_matching_loss_weight=0.0,
            use_equivariance_regularization=True,
        ),
        equivariance={"D": (1.0, 0, False), "G": (1.0, 1, False)},
    ),
    dict(
        name="stage3",
        # the official "train_the_second_half_decoder" selects no parameter of this generator (its names refer
        # to an older synthesis.b{res} layout); the intended set (ours, stages.py `late_decoder`) is given instead
        train_mode="train_the_second_half_decoder",
        trainable_layers=["synthesis.blocks.3", "synthesis.blocks.4", "synthesis.blocks.5", "synthesis.z_convs.3"],
        resume_kimg=41000,
        lr=5e-5,
        patchgan=True,
        loss=dict(
            kl_loss_weight=0.0,
            vf_loss_weight=0.0,
            use_adaptive_vf_loss=False,
            l1_pixel_loss_weight=0.0,
            perceptual_loss_weight=0.0,
            ssim_loss_weight=0.0,
            stylegan_t_discriminator_loss_weight=1.0,
            patchgan_discriminator_loss_weight=1.0,
            feature_matching_loss_weight=10.0,
            use_equivariance_regularization=False,
        ),
        equivariance={"D": (1.0, 0, False), "G": (1.0, 0, False)},
    ),
]
COMMON_LOSS = dict(
    l2_pixel_loss_weight=0.0,
    multiscale_block_indices=[0, 1, 2, 3, 4],
    multiscale_pixel_loss_weights=[0.1, 0.1, 0.1, 0.1, 0.1],
    multiscale_pixel_loss_start_kimg=0,
    multiscale_pixel_loss_end_kimg=5000,
    use_stylegan_t_disc_warmup=False,
    use_patchgan_disc_warmup=False,
    compression_mode="continuous",
)


def lpips_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Deterministic LPIPS weights (VGG16 trunk + linear heads; the downloads are not available): per key in
    sorted order, a standard normal draw from one generator (seed LPIPS_SEED), scaled by sqrt(2 / fan_in) for
    the trunk's 3x3 kernels, by 0.1 (absolute value) for the 1-channel linear heads, by 0.01 for biases.
    tests/test_tokenizer_steps_parity.py makes the same tensors and checks them against the recorded sums."""
    import torch

    generator = torch.Generator().manual_seed(LPIPS_SEED)
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


class _Recorder:
    """A stand-in for a module's global name (`torch`, `np`): forwards everything, records chosen calls."""

    def __init__(self, target: Any, recorded: dict[str, Any]) -> None:
        self._target, self._recorded = target, recorded

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in self._recorded:
            log = self._recorded[name]

            def call(*args, **kwargs):
                out = value(*args, **kwargs)
                log.append(out)
                return out

            return call
        return value


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0], "checkout of tianciB/VFM-VAE at b3a752a")
    p.add_argument("--tiny", type=Path, default=TINY, help="the tiny generator's folder (official_tokenizer_tiny)")
    args = p.parse_args()
    official = _common.check_folder(args.official, "training/loss.py", "--official")
    tiny = args.tiny.resolve()
    for name in ("config.yaml", "official_G.safetensors", "siglip2-tiny-patch16"):
        if not (tiny / name).exists():
            raise SystemExit(f"--tiny {tiny}: expected {name} inside")
    out = _common.prepare_out(args.out, OUTPUT_NAMES)
    _common.pin_runtime()
    import numpy as np
    import timm
    import torch
    import yaml
    from safetensors.torch import load_file

    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))  # imported by the loss module, unused
    generator_module = _common.import_from(official, "networks.generator")
    discriminator_module = _common.import_from(official, "networks.discriminator")
    diffaug_module = _common.import_from(official, "training.diffaug")
    kl_module = _common.import_from(official, "networks.utils.kl_utils")
    lpips_module = _common.import_from(official, "training.lpips")
    loss_module = _common.import_from(official, "training.loss")

    # ---- the networks
    g_kwargs = dict(yaml.safe_load((tiny / "config.yaml").read_text())["G_kwargs"])
    g_kwargs.pop("class_name")
    cwd = os.getcwd()
    os.chdir(tiny)  # vfm_name is the SigLIP folder, resolved relative to the working directory
    try:
        torch.manual_seed(0)
        G = generator_module.Generator(**g_kwargs)
    finally:
        os.chdir(cwd)
    G.load_state_dict(load_file(tiny / "official_G.safetensors"), strict=True)
    if G.c_dim != 0:
        raise SystemExit(f"the tiny generator is conditional (c_dim {G.c_dim}); the heads here are unconditional")

    real_create = timm.create_model

    def tiny_dino(name, pretrained=False, **kwargs):
        return real_create(name, pretrained=False, **{**kwargs, **DINO})

    timm.create_model = tiny_dino
    try:
        discriminators = {}
        for with_patchgan in (False, True):  # stages 0-2 have no PatchGAN, stage 3 has one
            torch.manual_seed(20)
            discriminators[with_patchgan] = discriminator_module.ProjectedDiscriminator(
                c_dim=0,
                vfm_name=g_kwargs["vfm_name"],
                use_patchgan_discriminator=with_patchgan,
                get_interm_feat=with_patchgan,
            )
    finally:
        timm.create_model = real_create
    full = discriminators[True]
    # PatchGAN width: the official class fixes ndf=64; a narrower one with the same structure keeps the files small
    full.patchgan_discriminator = discriminator_module.MultiscaleDiscriminator(
        input_nc=3, ndf=PATCHGAN_NDF, num_D=3, get_interm_feat=True
    )
    full.patchgan_discriminator.apply(discriminator_module.weights_init)
    _common.perturb_parameters(full, seed=21, std=0.05, only_trainable=False)
    initial_d = {k: v.detach().clone() for k, v in full.state_dict().items()}
    _common.save_tensors(out / "discriminator.safetensors", initial_d)

    # LPIPS without downloads: a random VGG16, then the deterministic weights
    lpips_module.models = types.SimpleNamespace(vgg16=lambda pretrained=False, **kw: _vgg16_random())
    lpips_module.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None

    # ---- recording of the draws
    recorded: dict[str, list] = {"randn": [], "rand": [], "randint": [], "random": [], "crop": []}
    kl_module.torch = _Recorder(torch, {"randn": recorded["randn"]})
    diffaug_module.torch = _Recorder(torch, {"rand": recorded["rand"], "randint": recorded["randint"]})
    discriminator_module.np = _Recorder(np, {})
    discriminator_module.np.random = _Recorder(np.random, {"random": recorded["random"]})  # type: ignore[misc]
    augment_calls: list[dict] = []
    real_diffaugment = discriminator_module.DiffAugment

    def recording_diffaugment(x, policy="", channels_first=True):
        rand_before, randint_before = len(recorded["rand"]), len(recorded["randint"])
        result = real_diffaugment(x, policy=policy, channels_first=channels_first)
        rands, ints = recorded["rand"][rand_before:], recorded["randint"][randint_before:]
        augment_calls.append(
            dict(
                size=list(x.shape[-2:]),
                brightness=rands[0].flatten(),
                saturation=rands[1].flatten(),
                contrast=rands[2].flatten(),
                shift=torch.stack([ints[0].flatten(), ints[1].flatten()], dim=1),
                cutout_offset=torch.stack([ints[2].flatten(), ints[3].flatten()], dim=1),
                random_before=len(recorded["random"]),
                crop_before=len(recorded["crop"]),
            )
        )
        return result

    discriminator_module.DiffAugment = recording_diffaugment
    base_crop = discriminator_module.RandomCrop

    class RecordingCrop(base_crop):
        @staticmethod
        def get_params(img, output_size):
            params = base_crop.get_params(img, output_size)
            recorded["crop"].append(params[:2])
            return params

    discriminator_module.RandomCrop = RecordingCrop

    stats: dict[str, float] = {}

    def report(name, value):
        if isinstance(value, torch.Tensor):
            stats[name] = float(value.detach().double().mean())
        else:
            stats[name] = float(value)

    loss_module.training_stats = types.SimpleNamespace(report=report, report0=report)

    # ---- the stages
    torch.manual_seed(30)
    images = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    summary: dict[str, Any] = {
        "batch": BATCH,
        "image_size": IMAGE_SIZE,
        "dino": DINO,
        "patchgan_ndf": PATCHGAN_NDF,
        "lpips_seed": LPIPS_SEED,
        "discriminator_perturbation": {"seed": 21, "std": 0.05},
        "versions": _common.versions("torch", "timm", "transformers", "torchmetrics"),
        "stages": {},
    }
    _common.save_tensors(out / "images.safetensors", {"images": images})
    lpips_sums: dict[str, list[float]] | None = None
    for index, stage in enumerate(STAGES):
        torch.manual_seed(100 + index)
        np.random.seed(100 + index)
        G.load_state_dict(load_file(tiny / "official_G.safetensors"), strict=True)
        G.train()
        D = discriminators[stage["patchgan"]]
        own = D.state_dict()
        D.load_state_dict({k: v for k, v in initial_d.items() if k in own}, strict=True)
        D.train()
        loss_kwargs = dict(COMMON_LOSS, **stage["loss"])
        loss = loss_module.TotalLoss(
            device=torch.device("cpu"),
            G=G,
            D=D,
            vfm_name=g_kwargs["vfm_name"],
            resume_kimg=stage["resume_kimg"],
            total_kimg=stage["resume_kimg"] + 1000,
            **loss_kwargs,
        )
        if loss.perceptual_module is not None:
            module = loss.perceptual_module
            shapes = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith("scaling_layer.")}
            weights = lpips_weights(shapes)
            module.load_state_dict(weights, strict=False)
            lpips_sums = {k: [float(v.double().sum()), float(v.double().square().sum())] for k, v in weights.items()}
        cur_nimg = stage["resume_kimg"] * 1000
        vf_weights: list[Any] = []
        real_vf_weight = loss.calculate_cur_vf_loss_weight

        def recording_vf_weight(rec_loss, vf_loss, last_layer, _real=real_vf_weight, _log=vf_weights):
            weight = _real(rec_loss, vf_loss, last_layer)
            _log.append((rec_loss.detach().clone(), torch.as_tensor(weight).detach().clone()))
            return weight

        loss.calculate_cur_vf_loss_weight = recording_vf_weight
        tensors: dict[str, torch.Tensor] = {}
        record: dict[str, Any] = {
            "train_mode": stage["train_mode"],
            "resume_kimg": stage["resume_kimg"],
            "cur_nimg": cur_nimg,
            "lr": stage["lr"],
            "loss_kwargs": loss_kwargs,
        }
        for phase in ("D", "G"):
            scale, turns, is_prior = stage["equivariance"][phase]
            G.equivariance_transform.forward = lambda validation=False, _d=(scale, turns, is_prior): _d
            for log in recorded.values():
                log.clear()
            augment_calls.clear()
            stats.clear()
            vf_weights.clear()
            if phase == "D":
                D.requires_grad_(True)
                if "dino" in D._modules:
                    D.dino.requires_grad_(False)  # training_loop.partial_freeze (phase D)
                module = D
            else:
                trainable = stage.get("trainable_layers")
                if trainable is None:
                    G.set_train_mode(stage["train_mode"])
                    trainable = G.trainable_layers
                # training_loop.partial_freeze (phase G): by module name substring
                G.requires_grad_(False)
                for name, layer in G.named_modules():
                    layer.requires_grad_(any(part in name for part in trainable))
                module = G
                record["trainable_layers"] = list(trainable)
                record["trainable_numel"] = sum(p.numel() for p in G.parameters() if p.requires_grad)
            totals: list[torch.Tensor] = []
            with _observe_backward(totals):
                loss.accumulate_gradients(phase=phase, real_img=images, real_c=None, cur_nimg=cur_nimg)
            module.requires_grad_(False)
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            if len(totals) != 1:
                raise SystemExit(f"{stage['name']} {phase}: expected one backward call, saw {len(totals)}")
            terms = dict(stats)
            terms[f"Loss/{phase}/total"] = float(totals[0])
            if phase == "G" and vf_weights:
                terms["Loss/G/rec_loss"] = float(vf_weights[0][0])
                terms["Loss/G/vf_weight"] = float(vf_weights[0][1])
            norms = {"total": _norm(grads.values())}
            if phase == "D":
                norms["projected"] = _norm(v for k, v in grads.items() if k.startswith("heads."))
                norms["patchgan"] = _norm(v for k, v in grads.items() if k.startswith("patchgan_discriminator."))
            else:
                for group in ("ldm_adapter.", "mapping.", "synthesis."):
                    norms[group.rstrip(".")] = _norm(v for k, v in grads.items() if k.startswith(group))
            record[phase] = {
                "equivariance": {"scale": scale, "rotation": turns, "is_eq_prior": is_prior},
                "terms": terms,
                "grad_norms": norms,
                "augment_calls": [],
            }
            if recorded["randn"]:
                tensors[f"{phase}.posterior_noise"] = recorded["randn"][0]
            for call_index, call in enumerate(augment_calls):
                # the crop draws of call k come after its DiffAugment draws and before those of call k + 1
                following = augment_calls[call_index + 1] if call_index + 1 < len(augment_calls) else None
                decided = recorded["random"][call["random_before"] : following["random_before"] if following else None]
                crops = recorded["crop"][call["crop_before"] : following["crop_before"] if following else None]
                crop = [int(crops[0][0]), int(crops[0][1])] if crops else None
                prefix = f"{phase}.augment{call_index}."
                for key in ("brightness", "saturation", "contrast", "shift", "cutout_offset"):
                    tensors[prefix + key] = call[key]
                record[phase]["augment_calls"].append(
                    {"size": call["size"], "crop_decision": float(decided[0]) if decided else None, "crop": crop}
                )
            for name, sn in _spectral_vectors(D).items():
                tensors[f"{phase}.after.{name}"] = sn
            if phase == "D":
                record["D"]["trained"] = sorted(grads)
                optimizer = torch.optim.Adam(
                    [p for p in D.parameters() if p.grad is not None], lr=stage["lr"], betas=(0.0, 0.99), eps=1e-8
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for name, value in D.state_dict().items():
                    if name.startswith(("heads.", "patchgan_discriminator.")) and not name.endswith(("_u", "_v")):
                        tensors[f"D.stepped.{name}"] = value
            else:
                G.zero_grad(set_to_none=True)
        summary["stages"][stage["name"]] = record
        _common.save_tensors(out / f"{stage['name']}.safetensors", tensors)
        print(
            f"{stage['name']}: D total {record['D']['terms']['Loss/D/total']:.6g}, G total "
            f"{record['G']['terms']['Loss/G/total']:.6g}",
            flush=True,
        )
    summary["lpips_sums"] = lpips_sums
    _common.save_json(out / "steps.json", summary)
    print(f"wrote {out} ({summary['versions']})")


def _vgg16_random():
    import torchvision

    return torchvision.models.vgg16(weights=None)


@contextlib.contextmanager
def _observe_backward(totals: list):
    """Record the tensor each `Tensor.backward` call starts from (the phase's total loss)."""
    import torch

    real = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        totals.append(self.detach().clone())
        return real(self, *args, **kwargs)

    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.backward = real


def _norm(tensors) -> float:
    import torch

    values = [t.double().square().sum() for t in tensors]
    return float(torch.stack(values).sum().sqrt()) if values else 0.0


def _spectral_vectors(D) -> dict:
    """The spectral-norm vectors of every head convolution (official names)."""
    return {
        name: buffer.detach().clone()
        for name, buffer in D.named_buffers()
        if name.startswith("heads.") and name.endswith(("weight_u", "weight_v"))
    }


if __name__ == "__main__":
    main()
