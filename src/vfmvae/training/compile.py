"""`run.compile: true`: regional `torch.compile` of the repeated blocks of each model family.

Compiling a whole training step makes one large graph per model: minutes of compile time for the full-size
tokenizer (a frozen SigLIP2-L, a decoder of six different blocks, two discriminators, LPIPS) and graph breaks
wherever eager-only code sits (DiffAugment's host draws, the equivariance draw, output objects). Here every
*repeated* block is compiled on its own, with `fullgraph=True` (a graph break is an error, never a silent fall
back to eager). Blocks of one class with the same shapes share one compiled graph, so the 28 blocks of an XL
diffusion transformer compile once, and a full-size compile costs seconds per distinct block, not minutes.
Everything between the blocks (embedders, losses, the optimizer step) stays eager.

`nn.Module.compile` compiles in place: parameter names, checkpoints and exports are unchanged, and a deep copy
(the EMA model) is an eager module again.

Recompilation is bounded by design: a region compiles once per distinct (block configuration, input shape,
grad mode, autocast state), always with static shapes (`dynamic=False`). torch's default would recompile a
region's second shape with symbolic sizes, which costs more to trace, still specialises on most sizes here and
gives slower kernels; the set of shapes is finite, so static graphs are both cheaper and bounded. The tokenizer
has more variants per block class than torch's default limit of 8 per code object: the largest is the decoder's
ConvNeXt layer at full size, 6 block resolutions x 4 latent scales of the equivariance draws x 2 grad modes (the
D step's generator pass runs without gradients) = 48 graphs; the encoder's attention projections have about 40
(their token counts follow the 4 VFM input scales). So its compiler raises the limit to TOKENIZER_RECOMPILE_LIMIT.
tests/test_compile.py proves that steps 2-5 of every training step compile nothing and that a second pass over
the same equivariance geometries compiles nothing.

Every compilation is logged as it starts and ends (`CompileWatch`, logger `vfmvae.training.compile`, rank 0): a
first step that takes minutes says that it is compiling, which graph and for how long, instead of looking like a
hang; the total compile seconds of a run can be read from its log (benchmarks/gpu_check.py does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CompileSettings",
    "CompileWatch",
    "compile_watch",
    "compile_regions",
    "diffusion_regions",
    "tokenizer_regions",
    "compile_diffusion",
    "compile_tokenizer",
    "repeated_layers",
]

# Per code object: above the 48 variants of the full-size tokenizer's most varied region (module docstring), with
# room for the eval-mode passes of grids and online evaluation; still a bound (past it torch runs the region eagerly
# and warns).
TOKENIZER_RECOMPILE_LIMIT = 96


@dataclass(frozen=True)
class CompileSettings:
    """How regions are compiled: `backend` ("inductor" for training, "aot_eager" in the CPU tests), the inductor
    `mode` (None = default; "max-autotune-no-cudagraphs" tunes the matmul kernels) and `dynamic` (False: one static
    graph per shape, see the module docstring; None is torch's automatic dynamic shapes, for comparison)."""

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = False

    def __post_init__(self) -> None:
        if self.mode is not None and self.backend != "inductor":
            raise ValueError(f"compile mode {self.mode!r} needs the inductor backend, not {self.backend!r}")

    def options(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "fullgraph": True, "dynamic": self.dynamic}


log = logging.getLogger(__name__)


class CompileWatch:
    """Counts, times and logs this process's compilations through dynamo's compile callbacks, which fire around
    each graph dynamo traces (a region's forward, once per new shape) and around the backward graph compiled at its
    first backward. One line as each starts ("compiling graph N (forward)") and one as it ends, with its seconds
    and the running total, so the last line of a stalled log says whether it was compiling."""

    def __init__(self) -> None:
        self.graphs = 0  # compilations finished
        self.seconds = 0.0  # their total wall time
        self._started: float | None = None
        self._lock = threading.Lock()

    def _on_start(self, args) -> None:
        with self._lock:
            self._started = time.perf_counter()
            number = self.graphs + 1
        _log_main(f"compiling graph {number} ({_what(args)}, compile id {args.compile_id})")

    def _on_end(self, args) -> None:
        with self._lock:
            if self._started is None:
                return
            seconds = time.perf_counter() - self._started
            self._started = None
            self.graphs += 1
            self.seconds += seconds
            graphs, total = self.graphs, self.seconds
        _log_main(
            f"compiled graph {graphs} ({_what(args)}) in {seconds:.1f} s; {total:.1f} s in {graphs} graphs so far"
        )


def _what(args) -> str:
    trigger = getattr(args.callback_trigger, "name", str(args.callback_trigger))
    return {"DYNAMO": "forward", "LAZY_BACKWARD": "backward"}.get(trigger, trigger.lower())


def _log_main(message: str) -> None:
    from vfmvae import distributed as dist_utils

    if dist_utils.is_main_process():
        log.info(message)


_WATCH: CompileWatch | None = None


def compile_watch() -> CompileWatch:
    """The process's CompileWatch, registered with dynamo's callbacks on first use."""
    global _WATCH
    if _WATCH is None:
        from torch._dynamo.callback import callback_handler

        _WATCH = CompileWatch()
        callback_handler.register_start_callback(_WATCH._on_start)
        callback_handler.register_end_callback(_WATCH._on_end)
    return _WATCH


def compile_regions(regions: Iterable[nn.Module], settings: CompileSettings | None = None) -> int:
    """Compile each module in place (`nn.Module.compile`, fullgraph); returns how many were compiled. Their
    compilations (at the first calls) are logged by `compile_watch()`."""
    options = (settings or CompileSettings()).options()
    compile_watch()
    count = 0
    for module in regions:
        module.compile(**options)
        count += 1
    return count


def repeated_layers(model: nn.Module) -> list[nn.Module]:
    """The longest ModuleList/Sequential of one module class inside `model`: a transformer's layer stack
    (transformers' `encoder.layers` / `encoder.layer`, timm's `blocks`)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > len(best):
            children = list(module)
            if len({type(child) for child in children}) == 1:
                best = children
    return best


def _vfm_layer_regions(model: nn.Module) -> list[nn.Module]:
    """The frozen VFM's layers. A transformers model records `hidden_states` with a forward hook on each layer that
    appends to a list: compiled with the layer, the hook guards on the list's length and recompiles once per layer
    index. So for transformers models the layer's children (norms, attention, MLP) are the regions and the hook
    runs eagerly around them; timm blocks carry no hooks and are compiled whole."""
    layers = repeated_layers(model)
    if _is_transformers_model(model):
        return [child for layer in layers for child in layer.children()]
    return layers


def _is_transformers_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def diffusion_regions(model: nn.Module) -> list[nn.Module]:
    """A DiffusionTransformer's blocks (one graph for all of them), its final layer and REPA/REG projectors."""
    return [*model.blocks, model.final_layer, *model.projectors]


def tokenizer_regions(
    generator: nn.Module,
    projected: nn.Module | None = None,
    patchgan: nn.Module | None = None,
    lpips: nn.Module | None = None,
) -> list[nn.Module]:
    """The repeated blocks of tokenizer training: the frozen VFM's layers, the encoder's and decompressor's
    attention-projection blocks, the decoder's modulated ConvNeXt layers and self-attention blocks, the projected
    discriminator's DINO blocks (not its spectral-norm heads), the PatchGAN and LPIPS. The wrappers around them
    (the VFM's resizing, DiffAugment's host draws, the equivariance transforms, the synthesis loop) stay eager."""
    from vfmvae.tokenizer.layers import AttnProjection

    regions = _vfm_layer_regions(generator.vfm.model)
    for projection in [*generator.patch_projs, generator.final_proj, generator.post_proj]:
        if isinstance(projection, AttnProjection):
            regions += list(projection.blocks)
    for block in generator.synthesis.blocks:
        regions += [*block.layers, *block.attns]
    if projected is not None:
        # the DINO blocks only: the heads' spectral-norm convolutions update their power-iteration buffers in place
        # at every training call, and inductor saves the updated buffer itself for the backward (not the clone
        # that eager and aot_eager keep), so D's second call (fake after real) breaks the first call's backward
        # ("modified by an inplace operation"). The heads are small 1-D convolutions; they stay eager.
        regions += list(projected.dino.blocks)
    regions += [module for module in (patchgan, lpips) if module is not None]
    return regions


def compile_diffusion(model: nn.Module, settings: CompileSettings | None = None) -> int:
    """Regional compilation of a diffusion transformer (before or after wrapping it in DDP)."""
    return compile_regions(diffusion_regions(model), settings)


def compile_tokenizer(
    generator: nn.Module,
    projected: nn.Module | None = None,
    patchgan: nn.Module | None = None,
    lpips: nn.Module | None = None,
    settings: CompileSettings | None = None,
) -> int:
    """Regional compilation of tokenizer training's networks. Two process-wide settings change with it:
    the recompile limit per code object (see TOKENIZER_RECOMPILE_LIMIT), and AOTAutograd's donated buffers are
    turned off, because the adaptive VF weight takes two gradients through the same graph (`retain_graph`),
    which a backward with donated buffers refuses."""
    _raise_recompile_limit(TOKENIZER_RECOMPILE_LIMIT)
    torch._functorch.config.donated_buffer = False
    return compile_regions(tokenizer_regions(generator, projected, patchgan, lpips), settings)


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * limit)
