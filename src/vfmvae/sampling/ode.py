"""Samplers in the package time convention (t = 1 noise -> t = 0 data, velocity eps - x).

* `sample_ode`: Euler or Heun steps of dx/dt = v(x, t) on a (shifted) uniform grid.
* `sample_sde`: Euler-Maruyama of the reverse SDE with diffusion coefficient w(t) = 2t, REG/SiT's sampler:
  grid linspace(1, 0.04, N) then a last deterministic step to 0. The drift uses the score implied by the
  velocity for the linear path, score = -((1 - t) v + x) / t, and drift = v - t * score (in REG's operation order).

Guidance (`Guidance`): v = v_uncond + s (v_cond - v_uncond) on every latent channel while t is inside the
interval [low, high] (package time; LightningDiT's `cfg_interval_start=a` is (0, 1 - a), REG's
guidance_low/high are used as they are). `channels=3` reproduces LightningDiT's published behaviour, which
guides only the first three channels (a DiT leftover) and keeps the conditional prediction for the rest. REG
models also integrate their class token, guided with `cls_scale`.

`SamplerConfig` names one sampler with its settings (what a preset of presets.py, or `vfmvae sample`, chooses).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vfmvae.diffusion.transport import shift_time
from vfmvae.limits import MAX_SAMPLER_STEPS

__all__ = ["Guidance", "SamplerConfig", "SAMPLERS", "time_grid", "guided_velocity", "sample_ode", "sample_sde"]


@dataclass(frozen=True)
class Guidance:
    scale: float = 1.0  # 1 = no guidance (one conditional pass)
    interval: tuple[float, float] = (0.0, 1.0)  # guide while low <= t <= high (package time)
    channels: int | None = None  # None = all latent channels; 3 = LightningDiT compatibility
    cls_scale: float | None = None  # REG class token; None = same as `scale`

    def __post_init__(self) -> None:
        # refused here, not only in argparse: a negative scale or an empty or out-of-range interval samples
        # without complaint but gives silently wrong images
        for name, value in (("scale (--cfg)", self.scale), ("cls_scale (--cls-cfg)", self.cls_scale)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"guidance {name} must be a finite number >= 0 (1 = no guidance), got {value}")
        low, high = self.interval
        if not (0.0 <= low <= high <= 1.0):
            raise ValueError(
                f"guidance interval (--interval) must be LOW,HIGH with 0 <= LOW <= HIGH <= 1 "
                f"(t = 1 is noise), got {low},{high}"
            )
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"guidance channels (--guide-channels) must be >= 1, got {self.channels}")

    def active(self, t: float) -> bool:
        return self.scale != 1.0 and self.interval[0] <= t <= self.interval[1]


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """steps + 1 times from 1 to 0 (float64), uniformly spaced then shifted (`shift_time`; > 1 lingers near noise).

    LightningDiT's `timestep_shift=s` (its own time axis) is `shift=1/s` here; its `num_steps` counts grid points,
    so its 250 is `steps=249`.
    """
    if steps < 1:
        raise ValueError("need at least one sampling step")
    check_shift(shift)
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device), shift)


def check_shift(shift: float) -> None:
    """A shift <= 0 maps every time to 0 or NaN: all-black images reported as success."""
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"time-grid shift (--shift) must be a finite number > 0 (1 = no shift), got {shift}")


SAMPLERS = ("euler", "heun", "sde")


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler, with which settings: what a preset (sampling/presets.py) or `vfmvae sample` chooses."""

    sampler: str = "euler"  # euler | heun (ODE) | sde (Euler-Maruyama, REG/SiT)
    steps: int = 50
    cfg_scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)  # guidance while low <= t <= high (t = 1 noise)
    guide_channels: int | None = None  # 3 = LightningDiT's published behaviour
    cls_cfg_scale: float | None = None  # REG class token; None = cfg_scale
    shift: float = 1.0  # ODE grid shift (LightningDiT's timestep_shift s is 1/s here)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= MAX_SAMPLER_STEPS:  # the time grid and its loop are sized by it
            raise ValueError(f"steps must be in 1..{MAX_SAMPLER_STEPS:,}, got {self.steps:,}")
        check_shift(self.shift)
        self.guidance  # noqa: B018 - builds (and so validates) the guidance settings now, not mid-run

    @property
    def guidance(self) -> Guidance:
        return Guidance(
            scale=self.cfg_scale,
            interval=tuple(self.interval),
            channels=self.guide_channels,
            cls_scale=self.cls_cfg_scale,
        )


def guided_velocity(
    model, x: torch.Tensor, t: float, y: torch.Tensor, cls: torch.Tensor | None, guidance: Guidance | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's (guided) velocity at time t for latents x (and REG class token `cls`), in x's dtype."""
    g = guidance if isinstance(guidance, Guidance) else Guidance(scale=float(guidance))
    dtype = next(model.parameters()).dtype
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=dtype)
    if not g.active(float(t)):
        out = model(x.to(dtype), tt, y, None if cls is None else cls.to(dtype))
        return out.sample.to(x.dtype), None if out.cls is None else out.cls.to(x.dtype)
    null = torch.full_like(y, model.config.num_classes)
    both = model(
        torch.cat([x, x]).to(dtype),
        torch.cat([tt, tt]),
        torch.cat([y, null]),
        None if cls is None else torch.cat([cls, cls]).to(dtype),
    )
    cond, uncond = both.sample.to(x.dtype).chunk(2)
    k = g.channels if g.channels is not None else cond.shape[1]
    if k > cond.shape[1]:
        raise ValueError(
            f"guidance channels (--guide-channels) {k} exceeds the model's {cond.shape[1]} latent channels"
        )
    v = cond.clone()
    v[:, :k] = uncond[:, :k] + g.scale * (cond[:, :k] - uncond[:, :k])
    v_cls = None
    if both.cls is not None:
        c_cond, c_uncond = both.cls.to(x.dtype).chunk(2)
        s = g.scale if g.cls_scale is None else g.cls_scale
        v_cls = c_uncond + s * (c_cond - c_uncond)
    return v, v_cls


@torch.no_grad()
def sample_ode(
    model,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 50,
    method: str = "euler",
    guidance: Guidance | float = 1.0,
    shift: float = 1.0,
    cls_noise: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latents (normalised, in noise's dtype) from `noise` at t = 1. `grid` overrides the time grid."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown ODE method {method!r} (euler, heun)")
    grid = time_grid(steps, shift, noise.device) if grid is None else grid
    x, cls = noise, _class_token_start(model, noise, cls_noise)
    for t_cur, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        dt = t_next - t_cur
        v, v_cls = guided_velocity(model, x, t_cur, labels, cls, guidance)
        if method == "heun":
            x_pred = x + dt * v
            c_pred = cls + dt * v_cls if cls is not None else None
            v2, v2_cls = guided_velocity(model, x_pred, t_next, labels, c_pred, guidance)
            v = (v + v2) / 2
            v_cls = (v_cls + v2_cls) / 2 if cls is not None else None
        x = x + dt * v
        if cls is not None:
            cls = cls + dt * v_cls
    return x


def _class_token_start(model, noise: torch.Tensor, cls_noise: torch.Tensor | None) -> torch.Tensor | None:
    dim = getattr(model.config, "class_token_dim", 0)
    if not dim:
        return None
    if cls_noise is None:
        raise ValueError("REG models need `cls_noise` (B, class_token_dim), the class token's starting noise")
    return cls_noise.to(noise.dtype)


def sde_grid(steps: int, device: torch.device | str = "cpu", t_last: float = 0.04) -> torch.Tensor:
    """REG/SiT's Euler-Maruyama grid: linspace(1, t_last, steps) then 0 (steps + 1 points, float64)."""
    if steps < 2:
        raise ValueError("the SDE sampler needs at least two steps")
    grid = torch.linspace(1.0, t_last, steps, dtype=torch.float64, device=device)
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def sample_sde(
    model,
    noise: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 250,
    guidance: Guidance | float = 1.0,
    cls_noise: torch.Tensor | None = None,
    step_noise: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Euler-Maruyama from t = 1 to 0.04, then one noise-free Euler step to 0; states in float64.

    Step noise comes from `step_noise(i)` (for replaying recorded draws) or per sample from `generators`
    (one per sample, so a sample does not depend on its batch), latent first, then the class token.
    """
    grid = sde_grid(steps, noise.device)
    x = noise.double()
    cls = _class_token_start(model, x, cls_noise)

    def draw(i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if step_noise is not None:
            return step_noise(i)
        if generators is None or len(generators) != x.shape[0]:
            raise ValueError("sample_sde needs one generator per sample (or step_noise)")
        eps, eps_cls = [], []
        for g in generators:
            eps.append(torch.randn(x.shape[1:], generator=g, dtype=torch.float64))
            if cls is not None:
                eps_cls.append(torch.randn(cls.shape[1:], generator=g, dtype=torch.float64))
        return torch.stack(eps).to(x.device), torch.stack(eps_cls).to(x.device) if cls is not None else None

    def drift(v: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        # score of the linear path from the velocity, in REG's operation order:
        # r = alpha / d_alpha = -(1 - t); var = t^2 - r * t; score = (r v - x) / var; drift = v - 0.5 * 2t * score
        r = -(1.0 - t)
        var = t * t - r * 1.0 * t
        score = (r * v - state) / var
        return v - 0.5 * (2.0 * t) * score

    last = len(grid) - 2
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        dt = t_next - t_cur
        if i < last:
            eps, eps_cls = draw(i)
        v, v_cls = guided_velocity(model, x, t_cur, labels, cls, guidance)
        d = drift(v, x, t_cur)
        if i < last:
            noise_scale = (2.0 * t_cur) ** 0.5
            x = x + d * dt + noise_scale * (eps * abs(dt) ** 0.5)
            if cls is not None:
                cls = cls + drift(v_cls, cls, t_cur) * dt + noise_scale * (eps_cls * abs(dt) ** 0.5)
        else:  # the last step (0.04 -> 0) returns the mean: no noise
            x = x + d * dt
            if cls is not None:
                cls = cls + drift(v_cls, cls, t_cur) * dt
    return x
