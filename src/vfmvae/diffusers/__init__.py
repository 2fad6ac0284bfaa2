"""vfmvae models in diffusers form: `VFMVAEAutoencoder`, `VFMVAETransformer2DModel`, `VFMVAEDiffusionPipeline`.

    pip install "vfmvae[diffusers]"

    import vfmvae.diffusers  # makes the classes known to diffusers' loader
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("path/to/exported-pipeline")
    images = pipe(class_labels=[207, 360], num_inference_steps=50, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0)).images

The diffusers classes wrap the package's own modules (`VFMVAE`, `DiffusionTransformer`) and samplers, so their
outputs are ours; `from_vfmvae`/`to_vfmvae` and `vfmvae.diffusers.export_pipeline` convert between the two folder
layouts. Importing this module needs diffusers; the rest of vfmvae does not.
"""

from __future__ import annotations

try:
    import diffusers  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('vfmvae.diffusers needs diffusers: pip install "vfmvae[diffusers]"') from err

from vfmvae.diffusers.autoencoder import VFMVAEAutoencoder
from vfmvae.diffusers.pipeline import VFMVAEDiffusionPipeline, export_pipeline
from vfmvae.diffusers.transformer import VFMVAETransformer2DModel


def _register_with_diffusers() -> None:
    """`DiffusionPipeline.from_pretrained(folder)` finds a pipeline class by the name in model_index.json as an
    attribute of the `diffusers` module; components are imported from the module path recorded next to them.
    Adding our pipeline class to that namespace lets the generic loader open our folders without custom code files
    (which diffusers would only run with `trust_remote_code=True`)."""
    for cls in (VFMVAEDiffusionPipeline, VFMVAEAutoencoder, VFMVAETransformer2DModel):
        if getattr(diffusers, cls.__name__, None) is None:
            setattr(diffusers, cls.__name__, cls)


_register_with_diffusers()

__all__ = ["VFMVAEAutoencoder", "VFMVAETransformer2DModel", "VFMVAEDiffusionPipeline", "export_pipeline"]
