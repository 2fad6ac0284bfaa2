"""Import official VFM-VAE checkpoints (tianciB/VFM-VAE) into `VFMVAE`, strictly and without pickle.

* The architecture comes from an official training config: its `G_kwargs` section (every key is either
  used or known to be irrelevant for inference; anything else is an error).
* Weights: a `.pth` training snapshot (`G_ema` is used), a bare state dict, or a `.safetensors` file with
  official key names. `.pth` files are read with `torch.load(weights_only=True)`, which refuses to run code.
* Every official key is mapped; none may be left over; shapes are checked. Three kinds of key are dropped
  after a check that they hold what we compute anyway: attention `zero_k_bias` (zeros), upsampler
  `blur_weight` (the fixed binomial kernel) and VFM `position_ids`.
* Key naming: both the HEAD naming `synthesis.blocks.{i}` and the older `synthesis.b{resolution}` are
  accepted (the released checkpoint predates the HEAD block naming). The VFM weights inside the checkpoint are
  used when present
  (`vfm_encoder.encoder.vision_model.vision_model.*` from transformers 4.x); otherwise those of `--vfm`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vfmvae.checkpoint.pretrained import load_state_dict_strict
from vfmvae.checkpoint.serialize import CheckpointFormatError, load_tensors
from vfmvae.checkpoint.torch_files import load_weights_only
from vfmvae.config import read_yaml
from vfmvae.tokenizer.model import VFMVAE, VFMVAEConfig
from vfmvae.vfm import FrozenVFM, VFMSpec, build_vfm
from vfmvae.vfm.registry import VFM_REGISTRY

__all__ = [
    "config_from_official",
    "vfm_spec_from_official",
    "load_official_weights",
    "convert_official_state_dict",
    "convert_official_tokenizer",
]

# G_kwargs that describe the VFM (official name -> VFMSpec field); patch_in_dimensions must be the VFM's width
_VFM_RENAMED = {"scale_factor": "scale_factor", "patch_from_layers": "layers"}
_VFM_DEFAULTS = {"scale_factor": 2.0, "layers": (0, 12, -1)}  # the official SigLIP2 setup, for configs that omit them
# G_kwargs that map onto VFMVAEConfig (official name -> ours)
_RENAMED = {
    "patch_out_dimensions": "proj_dims",
    "how_to_compress": "compress",
    "how_to_decompress": "decompress",
    "decompress_factor": "decompress_factor",
    "attnproj_quant_layers": "quant_layers",
    "attnproj_post_quant_layers": "post_quant_layers",
    "resolution_compression_factor": "downsample",
    "z_dimension": "z_dim",
    "z_pooled_resolution": "pooled_resolution",
    "z_dim_for_mapping_mlp_output": "w_dim",
    "concat_z_block_indices": "inject_blocks",
    "concat_z_mapped_dims": "inject_dims",
    "attn_block_indices": "attn_blocks",
    "attn_depths": "attn_depths",
    "num_blocks": "num_blocks",
    "add_additional_convnext": "extra_convnext",
    "legacy": "legacy_noise",
    "compression_mode": "compression",
    "vocab_size": "vocab_size",
    "vocab_width": "vocab_width",
    "num_codebooks": "num_codebooks",
    "vocab_beta": "vq_beta",
}
# G_kwargs that must have one value because only that path exists here
_REQUIRED_VALUES = {
    "how_to_process_concat_z": "unshuffle",
    "activation_for_concat_z": "lrelu",
    "use_self_attn": True,
    "use_cross_attn": False,
    "use_convnext": True,
    "use_gaussian_blur": True,
    "use_multiscale_output": True,
    "conditional": False,
    "img_channels": 3,
}
# G_kwargs that only affect training, precision or unused paths
_IGNORED = {
    "class_name",
    "vfm_name",
    "img_resolution",
    "patch_in_dimensions",
    "distmat_margin",
    "cos_margin",
    "distmat_weight",
    "cos_weight",
    "use_kl_loss",
    "use_vf_loss",
    "use_adaptive_vf_loss",
    "equivariance_regularization_p_prior",
    "equivariance_regularization_p_prior_scale",
    "use_equivariance_regularization",
    "num_fp16_res",
    "train_mode",
    "conv_clamp",
    "label_type",
    "label_dim",
    "use_entropy_loss",
    "entropy_temp",
    "synthesis_kwargs",
}


def vfm_spec_from_official(official: dict[str, Any], vfm: str | Path, *, source: str = "config") -> VFMSpec:
    """The VFM of an official training config (its taps and input scale), with the weights of `vfm`: a registered
    name (`vfmvae vfm list`) or a local transformers folder."""
    g = _g_kwargs(official, source)
    fields = {ours: g.get(theirs, _VFM_DEFAULTS[ours]) for theirs, ours in _VFM_RENAMED.items()}
    fields["layers"] = tuple(fields["layers"])
    text = str(vfm)
    return (
        VFMSpec(name=text, **fields) if text in VFM_REGISTRY else VFMSpec(name="custom", path=text, **fields)
    )  # an unregistered folder: its own family and arch


def _g_kwargs(official: dict[str, Any], source: str) -> dict[str, Any]:
    if "G_kwargs" not in official:
        raise CheckpointFormatError(f"{source}: no G_kwargs section (is this an official VFM-VAE training config?)")
    return dict(official["G_kwargs"])


def config_from_official(official: dict[str, Any], vfm: FrozenVFM, *, source: str = "config") -> VFMVAEConfig:
    """Translate an official training config (a dict with `G_kwargs`) into a `VFMVAEConfig` around `vfm`, built
    from `vfm_spec_from_official` of the same config."""
    g = _g_kwargs(official, source)
    unknown = sorted(set(g) - set(_RENAMED) - set(_VFM_RENAMED) - set(_REQUIRED_VALUES) - _IGNORED)
    if unknown:
        raise CheckpointFormatError(f"{source}: unknown G_kwargs keys {unknown}")
    for key, value in _REQUIRED_VALUES.items():
        if key in g and g[key] != value:
            raise CheckpointFormatError(f"{source}: G_kwargs.{key}={g[key]!r} is not supported (only {value!r})")
    synth = dict(g.get("synthesis_kwargs") or {})
    bad = sorted(set(synth) - {"channel_base", "channel_max", "num_res_blocks", "architecture"})
    if bad or synth.get("architecture", "skip") != "skip":
        raise CheckpointFormatError(f"{source}: unsupported synthesis_kwargs {bad or synth}")
    resolution = g.get("img_resolution") or (official.get("training_set_kwargs") or {}).get("resolution") or 256
    widths = g.get("patch_in_dimensions")
    if widths is not None and any(int(w) != vfm.width for w in widths):
        raise CheckpointFormatError(
            f"{source}: G_kwargs.patch_in_dimensions {list(widths)} do not match the width "
            f"{vfm.width} of the VFM {vfm.name}"
        )
    kwargs: dict[str, Any] = {ours: g[theirs] for theirs, ours in _RENAMED.items() if theirs in g}
    for key in ("proj_dims", "inject_blocks", "inject_dims", "attn_blocks", "attn_depths"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "inject_dims" in kwargs and "inject_blocks" in kwargs:  # official indexes mapped dims by block index
        dims = g["concat_z_mapped_dims"]
        kwargs["inject_dims"] = tuple(dims[i] for i in g["concat_z_block_indices"])
    kwargs.update({k: synth[k] for k in ("channel_base", "channel_max", "num_res_blocks") if k in synth})
    return VFMVAEConfig(vfm=vfm.spec, image_size=int(resolution), **kwargs)


def load_official_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A G state dict from a `.pth` snapshot (G_ema preferred), a bare `.pth` state dict or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    obj = load_weights_only(path, "official checkpoint")  # official snapshots hold only tensors and plain types
    if isinstance(obj, dict) and "G_ema" in obj:
        obj = obj["G_ema"]
    elif isinstance(obj, dict) and "G" in obj:
        obj = obj["G"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(f"{path}: expected a state dict of tensors (or a snapshot with G_ema)")
    return dict(obj)


_BLOCK_RES = re.compile(r"^synthesis\.b(\d+)\.")
_PATCH = re.compile(r"^ldm_adapter\.patch_quants\.(\d+)\.0\.")
_ZCONV = re.compile(r"^synthesis\.z_convs\.(\d+)\.(\d+)\.(\d+)\.(.+)$")
_CONV = re.compile(r"^(synthesis\.blocks\.\d+\.)(conv0|convs1\.(\d+))\.(.+)$")
_ATTN_FF = {"0.": "norm.", "1.": "fc1.", "3.": "fc2."}
_DROPPED = object()


def _map_key(key: str, model: VFMVAE) -> str | object | None:
    """Official key -> our key; `_DROPPED` for checked-and-dropped keys; None if unknown."""
    if key.startswith("vfm_encoder."):
        if key.endswith("position_ids"):
            return _DROPPED
        rest = key[len("vfm_encoder.encoder.") :]
        for prefix in ("vision_model.vision_model.", "vision_model."):
            if rest.startswith(prefix):
                return "vfm.model." + rest[len(prefix) :]
        return None
    if key.endswith("zero_k_bias") or key.endswith("blur_weight"):
        return _DROPPED
    m = _BLOCK_RES.match(key)
    if m:  # older naming synthesis.b{res}.*
        res = int(m.group(1))
        resolutions = model.config.block_resolutions()
        if res not in resolutions:
            return None
        key = f"synthesis.blocks.{resolutions.index(res)}." + key[m.end() :]
    if m := _PATCH.match(key):
        return f"patch_projs.{m.group(1)}." + key[m.end() :]
    for theirs, ours in (
        ("ldm_adapter.final_quant.", "final_proj."),
        ("ldm_adapter.post_quant.", "post_proj."),
        ("ldm_adapter.quantizer.", "quantizer."),
        ("ldm_adapter.linear_proj.", "vf_proj."),
        ("mapping.mlp.", "mapping."),
    ):
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    if key == "mapping.x_avg":
        return "mapping.w_avg"
    if m := _ZCONV.match(key):
        idx, seq, part, leaf = m.groups()
        conv = model.synthesis.latent_convs[idx]
        first = 1 if conv.unshuffle > 1 else 0  # PixelUnshuffle occupies slot 0
        second = 2 if (conv.unshuffle > 1 or conv.shuffle > 1) else 1  # a (un)shuffle sits between the two
        names = {first: ("dw", "pw", "norm"), second: ("out_pw", "out_norm")}.get(int(seq))
        if names is None or int(part) >= len(names):
            return None
        return f"synthesis.latent_convs.{idx}.{names[int(part)]}.{leaf}"
    if m := _CONV.match(key):
        prefix, which, j, leaf = m.groups()
        index = 0 if which == "conv0" else int(j) + 1
        leaf = {"pwconv1.weight": "pw1_weight", "pwconv1.bias": "pw1_bias"}.get(leaf, leaf)
        return f"{prefix}layers.{index}.{leaf}"
    if key.startswith("synthesis.blocks."):
        key = key.replace(".seperate_upsample_conv.", ".upsample.").replace(".last_upsample_conv.", ".skip_upsample.")
        key = key.replace(".self_attns.", ".attns.")
        if ".ff." in key:
            head, tail = key.split(".ff.", 1)
            for theirs, ours in _ATTN_FF.items():
                if tail.startswith(theirs):
                    return f"{head}.ff.{ours}{tail[len(theirs) :]}"
            return None
        return key
    return None


def _check_dropped(key: str, value: torch.Tensor, model: VFMVAE) -> str | None:
    if key.endswith("zero_k_bias") and torch.count_nonzero(value):
        return f"{key} is not all zeros"
    if key.endswith("blur_weight"):
        ours = _map_key(key.replace("blur_weight", "norm.weight"), model)
        module_path = str(ours).rsplit(".norm.weight", 1)[0]
        module = model.get_submodule(module_path)
        if value.shape != module.blur.shape or not torch.allclose(value.float(), module.blur, atol=1e-7):
            return f"{key} differs from the fixed binomial blur"
    return None


def convert_official_state_dict(
    official: dict[str, torch.Tensor], model: VFMVAE, *, source: str = "checkpoint"
) -> None:
    """Load official weights into `model` (in place); every key must map, none may be left over."""
    mapped: dict[str, torch.Tensor] = {}
    unknown, problems = [], []
    for key, value in official.items():
        ours = _map_key(key, model)
        if ours is None:
            unknown.append(key)
        elif ours is _DROPPED:
            if problem := _check_dropped(key, value, model):
                problems.append(problem)
        else:
            mapped[ours] = value
    if not any(k.startswith("vfm.model.") for k in mapped):  # no VFM weights inside: keep those of --vfm
        mapped.update({f"vfm.{k}": v for k, v in model.vfm.state_dict().items()})
    if unknown or problems:
        lines = [f"{source}: cannot convert"]
        if unknown:
            lines.append(f"  unmapped official keys ({len(unknown)}): " + ", ".join(unknown[:12]))
        lines.extend(f"  {p}" for p in problems)
        raise CheckpointFormatError("\n".join(lines))
    load_state_dict_strict(model, mapped, source=source)


def convert_official_tokenizer(
    config_path: str | Path, weights_path: str | Path, vfm: str | Path, out: str | Path | None = None
) -> VFMVAE:
    """The `vfmvae convert official-tokenizer` command as a function."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"official config not found: {config_path}")
    official_cfg = read_yaml(config_path.read_text(), f"official config {config_path}") or {}
    state = load_official_weights(weights_path)
    frozen = build_vfm(vfm_spec_from_official(official_cfg, vfm, source=str(config_path)))
    config = config_from_official(official_cfg, frozen, source=str(config_path))
    if "ldm_adapter.linear_proj.weight" in state:
        from dataclasses import replace

        config = replace(config, vf_projection=True)
    model = VFMVAE(config, prebuilt_vfm=frozen)
    convert_official_state_dict(state, model, source=str(weights_path))
    model.eval()
    if out is not None:
        model.save_pretrained(out)
    return model
