"""`run.compile: true` (training/compile.py): every training step compiles its repeated blocks with
`fullgraph=True` (a graph break raises) and compiles nothing after the first step.

Two CPU backends. Graph breaks and recompilations are decided by dynamo, before any backend sees a graph, so the
per-stage tokenizer tests use dynamo's `eager` backend (half the compile time of the tests). The diffusion tests and
one tokenizer test with every loss term use `aot_eager`, which also traces what inductor receives (AOTAutograd's
forward/backward graphs, in-place buffer updates such as spectral norm's, the double backward of the adaptive VF
weight) and must give the eager losses."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from vfmvae.config import load_config
from vfmvae.diffusion import TransportConfig, create_diffusion_model, training_loss
from vfmvae.tokenizer_training.draws import PassDraws
from vfmvae.tokenizer_training.equivariance import EquivarianceDraw
from vfmvae.training import optimizer_step
from vfmvae.training.compile import CompileSettings, compile_diffusion, compile_regions, compile_tokenizer

ROOT = Path(__file__).resolve().parents[1]
AOT_EAGER = CompileSettings(backend="aot_eager")
DYNAMO_ONLY = CompileSettings(backend="eager")
IDENTITY = EquivarianceDraw()


def no_recompilation():
    """Any recompilation inside raises (torch._dynamo.exc.RecompileError)."""
    return torch._dynamo.config.patch(error_on_recompile=True)


# ---- diffusion: the trainer's step (training_loss through optimizer_step), compiled vs eager ----------------------


@pytest.mark.parametrize(
    "arch,checkpointing", [("lightningdit-tiny", False), ("lightningdit-tiny", True), ("reg-sit-tiny", False)]
)
def test_diffusion_step_compiles_without_breaks_or_recompiles_and_matches_eager(arch, checkpointing):
    torch.manual_seed(0)
    eager = create_diffusion_model(arch)
    with torch.no_grad():  # zero-initialised adaLN and output layers would hide most of the graph
        for param in eager.parameters():
            param.add_(0.02 * torch.randn_like(param))
    compiled = copy.deepcopy(eager)
    assert compile_diffusion(compiled, AOT_EAGER) == len(compiled.blocks) + 1 + len(compiled.projectors)
    c = eager.config
    transport = TransportConfig(
        cosine_weight=1.0, align_weight=0.5 if c.align_dims else 0.0, cls_weight=0.03 if c.class_token_dim else 0.0
    )
    tokens = c.grid**2 + (1 if c.class_token_dim else 0)
    models = {"eager": eager, "compiled": compiled}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for name, m in models.items()}
    for model in models.values():
        model.gradient_checkpointing = checkpointing
        model.train()
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        b = 4
        batch = {
            "x": torch.randn(b, c.in_channels, c.input_size, c.input_size, generator=generator),
            "y": torch.randint(0, c.num_classes, (b,), generator=generator),
            "t": torch.rand(b, generator=generator),
            "drop": torch.rand(b, generator=generator) < 0.25,
            "targets": [torch.randn(b, tokens, d, generator=generator) for d in c.align_dims] or None,
            "cls": torch.randn(b, c.class_token_dim, generator=generator) if c.class_token_dim else None,
        }
        batch["noise"] = torch.randn(batch["x"].shape, generator=generator)
        batch["cls_noise"] = torch.randn(b, c.class_token_dim, generator=generator) if c.class_token_dim else None

        def loss_fn(module, batch):
            return training_loss(
                module,
                batch["x"],
                batch["y"],
                transport,
                t=batch["t"],
                noise=batch["noise"],
                cls_noise=batch["cls_noise"],
                drop_labels=batch["drop"],
                align_targets=batch["targets"],
                cls_target=batch["cls"],
            ).loss.mean()

        losses = {}
        for name, model in models.items():
            guard = no_recompilation() if step >= 1 and name == "compiled" else torch._dynamo.config.patch({})
            with guard:
                result = optimizer_step(model, optimizers[name], [batch], loss_fn, batch_size_of=lambda b: len(b["y"]))
            losses[name] = result.loss
        assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5, abs=1e-6), (step, losses)
    for (name, weight), other in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(other, weight, rtol=1e-4, atol=1e-5, msg=name)


def test_a_graph_break_in_a_region_is_an_error():
    class Branches(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # a branch on a tensor value: dynamo cannot keep it in one graph

    module = Branches()
    compile_regions([module], AOT_EAGER)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        module(torch.ones(2))


# ---- tokenizer: the D and G steps of every stage's objective ------------------------------------------------------

# The tiny recipe with fewer distinct shapes (one attention resolution, two VFM taps, a 2-block DINO with two taps):
# every kind of region stays, and the test compiles fewer graphs (compile time, not run time, is its cost).
SLIM = [
    "model.vfm.layers=[0,-1]",
    "model.proj_dims=[8,8]",
    "model.attn_blocks=[0]",
    "model.attn_depths=[1]",
    "disc.taps=[0,1]",
    "disc.backbone_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
]

STAGES = {
    # stages 0 and 1 (one objective, other weights): L1, LPIPS, multi-scale L1, KL, adaptive VF weight, GAN,
    # equivariance (latent and input branches)
    "stage0-1": ["loss.lpips=1.0", "loss.vf_adaptive=true", "loss.eq_p_latent=0.5", "loss.eq_p_prior_scale=1.0"],
    # stage 2: the decoder alone, L1 + LPIPS + SSIM + GAN
    "stage2": ["stage=decoder", "loss.lpips=1.0", "loss.ssim=1.0", "loss.vf=0", "loss.kl=0"],
    # stage 3: the late decoder, GAN + PatchGAN + feature matching, no equivariance
    "stage3": [
        "stage=late_decoder",
        "loss.l1=0",
        "loss.vf=0",
        "loss.kl=0",
        "loss.patchgan=1.0",
        "loss.feature_matching=10.0",
        "loss.equivariance=false",
        "disc.patchgan_ndf=8",
    ],
}


class _TokenizerStep:
    """The trainer's step body (tokenizer_training/trainer.py): a D step, then a G step, on a fixed batch."""

    def __init__(self, stage_overrides: list[str], compile_settings: CompileSettings | None) -> None:
        from vfmvae.evaluation.image_metrics import LPIPSMetric
        from vfmvae.tokenizer_training.config import TokenizerTrainConfig
        from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
        from vfmvae.tokenizer_training.objective import TokenizerObjective
        from vfmvae.tokenizer_training.stages import select_trainable
        from vfmvae.tokenizer_training.trainer import build_generator
        from vfmvae.training.run_log import autocast_factory

        recipe = ROOT / "configs" / "tokenizer" / "tiny.yaml"
        # the safe-loss guard active from the start, so that its device-side rule is inside the compiled steps
        overrides = ["data.source=.", "loss.safe_loss_after_images=0", *SLIM, *stage_overrides]
        cfg = load_config(TokenizerTrainConfig, recipe, overrides)
        torch.manual_seed(0)
        self.g = build_generator(cfg)
        self.trainable = select_trainable(self.g, cfg.stage)
        dc = cfg.disc
        mode = self.g.vfm.adapter.resize_mode
        self.d = ProjectedDiscriminator(
            dc.backbone, None, dc.input_size, dc.taps, dc.backbone_kwargs, dc.diffaug, resize_mode=mode
        )
        self.p = MultiscalePatchGAN(dc.patchgan_ndf) if cfg.loss.patchgan else None
        lpips = LPIPSMetric(None).net if cfg.loss.lpips else None  # lpips' own random VGG16 (pnet_rand)
        if compile_settings is not None:
            compile_tokenizer(self.g, self.d, self.p, lpips, compile_settings)
        self.d_modules = nn.ModuleList([m for m in (self.d.heads, self.p) if m is not None])
        self.d_params = list(self.d_modules.parameters())
        self.opt_g = torch.optim.Adam(self.trainable, lr=1e-4, betas=(0.0, 0.99), fused=True)
        self.opt_d = torch.optim.Adam(self.d_params, lr=1e-4, betas=(0.0, 0.99), fused=True)
        self.objective = TokenizerObjective(cfg, self.g, self.d, self.p, lpips, autocast_factory("fp32", "cpu"))
        self.batches = [{"x": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), "n": 2}]

    def __call__(self, step: int, geometry: EquivarianceDraw = IDENTITY) -> tuple[float, float]:
        """One D and one G step. The trainer's per-step seed draws the posterior noise and DiffAugment's numbers;
        the equivariance transform is given (`geometry`), because it decides the shapes the regions see."""
        self.objective.generator.manual_seed(step)
        self.objective.images_seen = 2 * step
        batches = [{**batch, "draws": PassDraws(equivariance=geometry)} for batch in self.batches]
        size = lambda b: b["n"]  # noqa: E731
        self.g.train()
        self.d_modules.requires_grad_(True)
        guard, discriminator_guard = self.objective.guard, self.objective.discriminator_guard
        res_d = optimizer_step(
            self.d_modules,
            self.opt_d,
            batches,
            self.objective.discriminator,
            batch_size_of=size,
            params=self.d_params,
            accepted=discriminator_guard.step_accepted if discriminator_guard is not None else None,
        )
        self.d_modules.requires_grad_(False)
        res_g = optimizer_step(
            self.g,
            self.opt_g,
            batches,
            self.objective.generator_loss,
            batch_size_of=size,
            params=self.trainable,
            accepted=guard.step_accepted if guard is not None else None,
        )
        return res_d.loss, res_g.loss


def _trains_without_recompiling(step: _TokenizerStep, steps: int = 5) -> list[tuple[float, float]]:
    """Steps 1..`steps`: step 1 compiles every region (a graph break raises there); the later steps (other draws,
    the same shapes) may compile nothing."""
    losses = [step(0)]
    with no_recompilation():
        losses += [step(i) for i in range(1, steps)]
    assert all(torch.isfinite(torch.tensor(pair)).all() for pair in losses), losses
    assert losses[-1][1] != losses[0][1]  # the generator trained
    return losses


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_tokenizer_steps_compile_without_breaks_and_steps_2_to_5_compile_nothing(stage):
    """Stages 2 and 3 train part of the decoder: other gradient requirements, so other graphs than stages 0-1,
    whose steps the AOTAutograd test below compiles."""
    _trains_without_recompiling(_TokenizerStep(STAGES[stage], DYNAMO_ONLY))


# Every term of every stage at once (L1, LPIPS, SSIM, multi-scale L1, KL, adaptive VF weight, GAN through the
# spectral-norm projected D, PatchGAN, feature matching, equivariance), so that one AOTAutograd test covers them.
EVERY_TERM = [*STAGES["stage0-1"], "loss.ssim=1.0", "loss.patchgan=1.0", "loss.feature_matching=10.0"]
EVERY_TERM += ["disc.patchgan_ndf=8"]


@pytest.mark.slow
def test_tokenizer_steps_of_every_term_through_aot_autograd_give_the_eager_losses_and_steps_2_to_5_compile_nothing():
    """Stages 0-1's objective with stage 3's terms added, compiled as inductor receives it (AOTAutograd's joint
    graphs): the adaptive VF weight's second backward through the same graphs works (no donated buffers), the
    in-place state updates inside compiled regions (spectral-norm vectors) are kept, and the losses equal eager
    step after step."""
    losses = _trains_without_recompiling(_TokenizerStep(EVERY_TERM, AOT_EAGER))
    eager = _TokenizerStep(EVERY_TERM, None)
    expected = [value for i in range(5) for value in eager(i)]
    assert [value for pair in losses for value in pair] == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_each_equivariance_geometry_compiles_once():
    """An equivariance transform changes the shapes: a scaled latent those of every decoder region, a downscaled
    input those of the VFM and encoder regions. Each geometry compiles once; a second pass compiles nothing, so
    compilation is bounded by the finite set of geometries (equivariance.py: 4 latent scales x 4 rotations and 3
    input scales)."""
    step = _TokenizerStep([*STAGES["stage0-1"], "loss.lpips=0"], DYNAMO_ONLY)  # LPIPS is not what changes shape
    geometries = [IDENTITY, EquivarianceDraw(0.5, 1, on_latent=True), EquivarianceDraw(0.5, 0, on_latent=False)]
    for i, geometry in enumerate(geometries):
        step(i, geometry)
    with no_recompilation():
        for i, geometry in enumerate(geometries):
            step(3 + i, geometry)


def test_no_compiled_region_holds_a_spectral_norm_convolution():
    """Inductor (not aot_eager) saves a spectral-norm convolution's in-place-updated power-iteration buffer itself
    for the backward, so the D step's second call breaks the first call's backward: measured at full size
    (benchmarks/compile_time.py, stage 0) and with one compiled SpectralNormConv1d called twice. The projected
    discriminator's heads therefore stay eager; its DINO blocks are compiled."""
    from vfmvae.tokenizer_training.spectral_norm import SpectralNormConv1d
    from vfmvae.training.compile import tokenizer_regions

    step = _TokenizerStep(STAGES["stage3"], None)
    regions = tokenizer_regions(step.g, step.d, step.p)
    assert any(region in regions for region in step.d.dino.blocks)
    spectral = [m for region in regions for m in region.modules() if isinstance(m, SpectralNormConv1d)]
    assert not spectral and any(isinstance(m, SpectralNormConv1d) for m in step.d.heads.modules())
