"""Images in: folders and tar shards, ADM centre crop, seeded flips, bad-file skipping, synthetic data."""

from vfmvae.data.folder import ImageFolderDataset, list_image_folder
from vfmvae.data.images import BadImage, SkipCounter, decode_image
from vfmvae.data.loader import DataConfig, DataStream, build_dataset, collate_skip_bad, detect_format
from vfmvae.data.sampler import ResumableSampler, rank_shard
from vfmvae.data.shards import TarShardDataset, list_shards
from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vfmvae.data.transforms import ImageOptions, center_crop_adm, to_float01

__all__ = [
    "BadImage",
    "DataConfig",
    "DataStream",
    "ImageFolderDataset",
    "ImageOptions",
    "ResumableSampler",
    "SkipCounter",
    "SyntheticConfig",
    "TarShardDataset",
    "build_dataset",
    "center_crop_adm",
    "collate_skip_bad",
    "decode_image",
    "detect_format",
    "list_image_folder",
    "list_shards",
    "rank_shard",
    "to_float01",
    "write_synthetic_dataset",
]
