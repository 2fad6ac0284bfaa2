"""Deterministic flow sampling: Euler steps of dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data)."""

from __future__ import annotations

import torch

from vfmvae.diffusion.transport import shift_time

__all__ = ["time_grid", "guided_velocity", "euler_ode"]


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """steps + 1 times from 1 to 0, uniformly spaced then shifted (`shift_time`; shift > 1 lingers near noise)."""
    if steps < 1:
        raise ValueError("need at least one sampling step")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift).float()


def guided_velocity(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cls: torch.Tensor | None,
                    cfg_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """v_uncond + s (v_cond - v_uncond) on every channel (s = 1: one conditional pass)."""
    tt = t.expand(x.shape[0])
    if cfg_scale == 1.0:
        out = model(x, tt, y, cls)
        return out.sample, out.cls
    null = torch.full_like(y, model.config.num_classes)
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]),
                 None if cls is None else torch.cat([cls, cls]))
    cond, uncond = both.sample.chunk(2)
    v = uncond + cfg_scale * (cond - uncond)
    v_cls = None
    if both.cls is not None:
        c_cond, c_uncond = both.cls.chunk(2)
        v_cls = c_uncond + cfg_scale * (c_cond - c_uncond)
    return v, v_cls


@torch.no_grad()
def euler_ode(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 50, cfg_scale: float = 1.0,
              shift: float = 1.0, cls_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised latents from `noise` (B, C, H, W) by `steps` Euler steps. REG models also integrate their
    class token, starting from `cls_noise` (drawn from the noise's generator state if not given)."""
    x = noise
    cls = None
    if getattr(model.config, "class_token_dim", 0):
        cls = cls_noise if cls_noise is not None else torch.randn(noise.shape[0], model.config.class_token_dim,
                                                                  device=noise.device, dtype=noise.dtype)
    grid = time_grid(steps, shift, noise.device)
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        v, v_cls = guided_velocity(model, x, t_cur, labels, cls, cfg_scale)
        x = x + (t_next - t_cur) * v
        if cls is not None:
            cls = cls + (t_next - t_cur) * v_cls
    return x
