"""Data-loading throughput: decode, ADM centre crop and flip through `DataStream`, from an image folder and from
WebDataset tar shards of the same synthetic images (JPEG-free PNGs at --size px).

    python data_loading.py --num 512 --size 256 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit

from vfmvae.data import DataConfig, DataStream
from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset


def _rate(source: Path, args) -> float:
    cfg = DataConfig(source=source, resolution=args.size, num_workers=args.workers, hflip=True)
    stream = DataStream(cfg, args.batch)
    next(stream)  # start-up (worker processes, first shard) is not timed
    start, seen = time.perf_counter(), 0
    while seen < args.num:
        seen += len(next(stream)["label"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(
            SyntheticConfig(out=root, num=args.num, size=args.size, shards=True, shard_size=64), progress=False
        )
        folder, shards = _rate(root / "images", args), _rate(root / "shards", args)
    emit(
        {
            "benchmark": "data_loading",
            "num": args.num,
            "size": args.size,
            "batch": args.batch,
            "workers": args.workers,
            "folder_images_per_s": round(folder, 1),
            "shards_images_per_s": round(shards, 1),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
