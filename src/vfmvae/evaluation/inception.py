"""The FID Inception-v3 of the ADM evaluator, through torch-fidelity's TF-compatible port (wrapped, not re-written).

torch-fidelity's `FeatureExtractorInceptionV3` reproduces the 2015-12-05 TF graph: uint8 input, TF1-legacy
bilinear resize to 299 inside the network, (x - 128) / 128. We add what the ADM evaluator reads and it does
not provide: the sFID feature, `mixed_6/conv` = Mixed_6d.branch1x1 (after BN + ReLU), first 7 channels,
flattened in NHWC order (17 x 17 x 7 = 2023), taken with a forward hook. Weights are loaded by us (safely)
instead of by torch-fidelity's `torch.load(weights_only=False)`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from vfmvae.checkpoint.digest import file_sha256
from vfmvae.checkpoint.training import load_state_strict
from vfmvae.evaluation.weights import (
    INCEPTION_FILE,
    INCEPTION_SHA256_PREFIX,
    INCEPTION_URL,
    load_weights,
    random_init_seed,
    resolve_weights,
)
from vfmvae.seeding import derive_seed

__all__ = ["InceptionV3", "load_inception", "random_init_inception"]


class InceptionV3(nn.Module):
    """`forward(uint8 (B, 3, H, W))` -> {"pool": (B, 2048), "spatial": (B, 2023), "logits": (B, 1008)} (float32).

    `logits` are pool3 @ W^T without bias (ADM's IS logits, torch-fidelity's `logits_unbiased`).
    """

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None, source: str = "state dict") -> None:
        super().__init__()
        import torch_fidelity.feature_extractor_inceptionv3 as tfi

        # Build the network without letting torch-fidelity fetch or unpickle anything; load weights ourselves.
        with (
            mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}),
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None),
        ):
            self.net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
        if state_dict is not None:
            load_state_strict(self.net, state_dict, source, advice=f"expected torch-fidelity's {INCEPTION_FILE}")
        self.net.eval().requires_grad_(False)
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._spatial = output[:, :7].permute(0, 2, 3, 1).reshape(output.shape[0], -1)  # NHWC flatten

    def train(self, mode: bool = True) -> InceptionV3:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        pool, logits = self.net(images)
        spatial, self._spatial = self._spatial, None
        return {"pool": pool.float(), "spatial": spatial.float(), "logits": logits.float()}


def random_init_inception(seed: int) -> InceptionV3:
    """The architecture with seeded random weights (`random-init:SEED`), drawn without touching the global RNG.

    He-normal weights keep the activations' scale through the ~20 layers (PyTorch's default init shrinks them to
    ~1e-8 there, so every image would get the same features)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "inception"))
        net = InceptionV3(None)
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> tuple[InceptionV3, dict]:
    """The FID Inception from a local file (or URL when online), or `random-init:SEED`. Returns the network and its
    provenance (the file and its sha256)."""
    seed = random_init_seed(weights)
    if seed is not None:
        return random_init_inception(seed).to(device), {
            "inception_weights": f"RANDOM-INIT (seed {seed}): not the FID Inception, values compare with nothing",
            "inception_sha256": f"random-init-{seed}",
        }
    path = resolve_weights(weights, what="Inception (FID)", expected_file=INCEPTION_FILE, url=INCEPTION_URL)
    digest = file_sha256(path)
    expected = digest.startswith(INCEPTION_SHA256_PREFIX)
    if not expected:  # another file gives FID/IS values that cannot be compared with any published number
        warnings.warn(
            f"{path} is not the pt_inception-2015-12-05 FID Inception ({INCEPTION_FILE}: sha256 "
            f"{INCEPTION_SHA256_PREFIX}..., this file {digest[:8]}...); its FID/IS are not comparable with "
            "published numbers",
            stacklevel=2,
        )
    net = InceptionV3(load_weights(path), source=str(path)).to(device)
    return net, {"inception_weights": str(path), "inception_sha256": digest, "inception_weights_expected": expected}
