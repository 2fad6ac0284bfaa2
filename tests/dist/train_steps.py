"""A few training steps through the real data pipeline, as one process or under torchrun.

    python train_steps.py --source DIR --batch 8 --out w.safetensors
    torchrun --nproc-per-node=2 train_steps.py --source DIR --batch 4 --out w.safetensors
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import TinyNet, TinyNetConfig, classification_loss  # noqa: E402

from vfmvae import distributed as dist_utils  # noqa: E402
from vfmvae.checkpoint import CheckpointManager, capture_rng_state, save_tensors  # noqa: E402
from vfmvae.data import DataConfig, DataStream  # noqa: E402
from vfmvae.training import optimizer_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--batch", type=int, required=True, help="per-process batch size")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist_utils.init_distributed()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    torch.manual_seed(0)
    model = TinyNet(TinyNetConfig(channels=8, num_classes=4))
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    stream = DataStream(DataConfig(source=args.source, resolution=32, num_workers=0, seed=0), args.batch, rank=rank, world=world)
    for _ in range(args.steps):
        batch = next(stream)
        chunk = len(batch["label"]) // args.accum
        micro = [{"image": batch["image"][i : i + chunk], "label": batch["label"][i : i + chunk]}
                 for i in range(0, len(batch["label"]), chunk)]
        result = optimizer_step(wrapped, opt, micro, classification_loss, batch_size_of=lambda b: len(b["label"]))
        assert not result.skipped
    CheckpointManager(args.out.parent / "run").save(
        args.steps, images_seen=args.steps * args.batch * world, model=model.state_dict(),
        state={"opt": opt.state_dict()}, rank_state={"rng": capture_rng_state(), "data": stream.state_dict()},
    )
    if rank == 0:
        save_tensors(args.out, model.state_dict())
    dist_utils.destroy_distributed()


if __name__ == "__main__":
    main()
