"""`from_pretrained` of our diffusers model classes: the folder's sizes are checked before diffusers builds anything."""

from __future__ import annotations

from typing import Any

from vfmvae.checkpoint.pretrained import check_diffusers_model_folder

__all__ = ["HeaderCheckedLoading"]


class HeaderCheckedLoading:
    """Listed before diffusers' `ModelMixin`: every size in config.json is checked against the weights' header
    (nothing is built or allocated for a config that declares more than the weights hold), then diffusers loads."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any):
        check_diffusers_model_folder(cls, pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[misc]
