"""Spectrally normalised 1-D convolution with the official power-iteration order.

The official discriminator heads (tianciB/VFM-VAE@b3a752a networks/discriminator.py `SpectralConv1d`) use torch's
hook-based `torch.nn.utils.spectral_norm.SpectralNorm`: on every call in training mode it runs one power iteration,
**v first, then u** (v = normalize(W^T u), u = normalize(W v)), and divides the weight by sigma = u . (W v).
torch's newer `parametrizations.spectral_norm` updates u first, then v, which from the same stored vectors gives a
different sigma (measured up to 25 % on a fresh head), so it is not used here.

State-dict keys are the official ones: `weight_orig` (the raw weight), `weight_u`, `weight_v`. State dicts written
with the parametrization's keys (`parametrizations.weight.original`, `parametrizations.weight.0._u` / `_v`: our
checkpoints and stage hand-offs before this module) are upgraded on read by `upgrade_spectral_norm_keys`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralNormConv1d", "upgrade_spectral_norm_keys"]

# the parametrization's key suffix -> ours (the official hook's names)
_PARAMETRIZATION_KEYS = {
    "parametrizations.weight.original": "weight_orig",
    "parametrizations.weight.0._u": "weight_u",
    "parametrizations.weight.0._v": "weight_v",
}


def upgrade_spectral_norm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with `torch.nn.utils.parametrizations.spectral_norm` keys renamed to ours (others unchanged).

    The stored vectors keep their meaning: u and v are the current estimates of the leading singular vectors,
    which the next training-mode call refines."""
    upgraded = {}
    for key, value in state.items():
        for old, new in _PARAMETRIZATION_KEYS.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        upgraded[key] = value
    return upgraded


class SpectralNormConv1d(nn.Conv1d):
    """`nn.Conv1d` whose weight is W / sigma(W), sigma estimated by one power iteration per training-mode call.

    W is `weight_orig` reshaped to (out_channels, in_channels x kernel). In eval mode the stored u, v are used
    without an update. The forward pass has no data-dependent Python branch (only `self.training`), so it
    compiles with torch.compile.
    """

    def __init__(self, *args, eps: float = 1e-12, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        raw = self.weight.detach()
        del self.weight  # the normalised weight is computed per call from weight_orig
        self.weight_orig = nn.Parameter(raw)
        rows, cols = raw.shape[0], raw[0].numel()
        # random unit vectors, no warm-up iterations: as the official hook (SpectralNorm.apply) starts
        self.register_buffer("weight_u", F.normalize(raw.new_empty(rows).normal_(0, 1), dim=0, eps=eps))
        self.register_buffer("weight_v", F.normalize(raw.new_empty(cols).normal_(0, 1), dim=0, eps=eps))

    @torch.no_grad()
    def power_iteration(self) -> None:
        """One step of the power method, v then u (the official order); updates the stored vectors in place."""
        matrix = self.weight_orig.flatten(1)
        self.weight_v.copy_(F.normalize(torch.mv(matrix.t(), self.weight_u), dim=0, eps=self.eps))
        self.weight_u.copy_(F.normalize(torch.mv(matrix, self.weight_v), dim=0, eps=self.eps))

    def normalized_weight(self) -> torch.Tensor:
        matrix = self.weight_orig.flatten(1)
        # clones: the next call updates the buffers in place, which must not touch this call's autograd graph
        u, v = self.weight_u.clone(), self.weight_v.clone()
        sigma = torch.dot(u, torch.mv(matrix, v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.power_iteration()
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a direct `load_state_dict` of an old state dict: rename this module's keys in place
        for old, new in _PARAMETRIZATION_KEYS.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
