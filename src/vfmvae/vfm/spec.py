"""`VFMSpec`: everything needed to build or load one frozen VFM, as one frozen dataclass.

The same spec describes the VFM of a training recipe (`model.vfm`), of a saved tokenizer (`config.json`,
where `family` and `arch` are filled in so the folder rebuilds offline) and of an alignment target; `build_vfm`
(vfm/encoder.py) is the one function that turns a spec into a `FrozenVFM`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfmvae.limits import MAX_BLOCKS, MAX_IMAGE_SIDE
from vfmvae.vfm.families import VFM_ADAPTERS
from vfmvae.vfm.registry import VFM_REGISTRY, VFMEntry

__all__ = ["VFMSpec"]

MAX_SCALE_FACTOR = 8.0  # the VFM input is the image rescaled by this (the published models use 1 to 2)
# architecture keys (transformers' and timm's names) that are counts or sizes: positive, and bounded where no weight
# records them in full (a layer count is checked against the weights' header when a tokenizer folder loads)
_ARCH_COUNTS = {"num_hidden_layers": MAX_BLOCKS, "depth": MAX_BLOCKS, "num_register_tokens": MAX_BLOCKS}
_ARCH_SIZES = {"image_size": 2 * MAX_IMAGE_SIDE, "img_size": 2 * MAX_IMAGE_SIDE}
_ARCH_POSITIVE = ("hidden_size", "num_attention_heads", "intermediate_size", "patch_size", "embed_dim", "num_heads")


def _check_arch_sizes(arch: dict[str, Any]) -> None:
    for key, value in arch.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        limit = _ARCH_COUNTS.get(key, _ARCH_SIZES.get(key))
        if limit is not None and not 0 <= value <= limit:
            raise ValueError(f"arch.{key} must be in 0..{limit:,}, got {value:,}")
        if key in _ARCH_POSITIVE and value < 1:
            raise ValueError(f"arch.{key} must be > 0, got {value}")


@dataclass(frozen=True)
class VFMSpec:
    """Which frozen VFM, where its weights are, and how the tokenizer (or any caller) feeds and taps it.

    Defaults are the released VFM-VAE's: SigLIP2-L/16 at 512 px, taps (0, 12, -1), 256-px images upsampled x2.
    """

    name: str = "siglip2-large-patch16-512"  # registry name (`vfmvae vfm list`), or a label for an unregistered VFM
    path: str | None = None  # the weights: a local folder/file or a hub id; None = the registry's
    family: str | None = None  # adapter (a VFM_ADAPTERS key); None = the registry's, or the folder's
    arch: dict[str, Any] = field(default_factory=dict)  # architecture config; empty = the registry's, or the folder's
    layers: tuple[int, ...] = (0, 12, -1)  # taps: 0 = embeddings, k = block k, -1 = final (post-LN), -2 = last block
    scale_factor: float | None = None  # input rescale; None = the registry's for 256-px images (else 1.0)
    random_init: bool = False  # random weights (tests, benchmarks); the `*-test` VFMs always have

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if self.family is not None and self.family not in VFM_ADAPTERS:
            raise ValueError(f"family {self.family!r} is not a VFM family (known: {', '.join(VFM_ADAPTERS)})")
        if not self.layers:
            raise ValueError("layers must name at least one tap")
        if self.scale_factor is not None and not 0 < self.scale_factor <= MAX_SCALE_FACTOR:
            raise ValueError(f"scale_factor must be in (0, {MAX_SCALE_FACTOR}], got {self.scale_factor}")
        _check_arch_sizes(self.arch)
        if self.entry is None and self.path is None and not (self.family and self.arch):
            raise ValueError(
                f"{self.name!r} is not a registered VFM (`vfmvae vfm list` shows the names); for another "
                "VFM give path (a local transformers folder), or family and arch"
            )
        if self.entry is not None and self.family is not None and self.family != self.entry.family:
            raise ValueError(f"family {self.family!r} contradicts the registered {self.name} ({self.entry.family})")

    @classmethod
    def from_name(cls, name_or_path: str | Path, **fields: Any) -> VFMSpec:
        """A registered name, or a local transformers folder (then the folder is both label and path)."""
        text = str(name_or_path)
        return cls(name=text, **fields) if text in VFM_REGISTRY else cls(name=text, path=text, **fields)

    @property
    def entry(self) -> VFMEntry | None:
        """The registry entry of `name`, if registered."""
        return VFM_REGISTRY.get(self.name)

    @property
    def has_weights(self) -> bool:
        """False for random-init specs and the registry's test architectures (which have no weights anywhere)."""
        if self.random_init:
            return False
        return self.path is not None or (self.entry is not None and self.entry.hub_id is not None)

    def weights_source(self) -> str | None:
        return self.path if self.path is not None else (self.entry.hub_id if self.entry is not None else None)

    def resolved_scale_factor(self) -> float:
        return self.scale_factor if self.scale_factor is not None else (self.entry.scale_factor if self.entry else 1.0)
