"""Read a whole dataset through the training pipeline once: counts, skipped files by reason, a preview grid."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vfmvae.data.folder import ImageFolderDataset
from vfmvae.data.images import SkipCounter
from vfmvae.data.loader import DataConfig, build_dataset, collate_skip_bad

__all__ = ["InspectReport", "inspect_dataset"]


@dataclass
class InspectReport:
    source: str
    format: str
    num_images: int = 0
    num_skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    label_counts: dict[int, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    grid: str | None = None

    def summary(self) -> str:
        labels = f"{len(self.label_counts)} labels" if self.label_counts else "unlabeled"
        skipped = ", ".join(f"{k}: {v}" for k, v in self.skipped_by_reason.items())
        return f"{self.source} ({self.format}): {self.num_images} images, {labels}, {self.num_skipped} skipped" + (
            f" ({skipped})" if skipped else ""
        )


def inspect_dataset(
    cfg: DataConfig,
    *,
    grid_path: str | Path | None = None,
    per_class: int = 8,
    max_classes: int = 16,
    batch_size: int = 64,
    progress: bool = True,
) -> InspectReport:
    from tqdm.auto import tqdm

    from vfmvae.vis import save_grid

    dataset = build_dataset(cfg, loop=False)
    is_folder = isinstance(dataset, ImageFolderDataset)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=cfg.num_workers, collate_fn=collate_skip_bad, shuffle=False
    )
    skips = SkipCounter()
    labels: Counter[int] = Counter()
    preview: dict[int, list[torch.Tensor]] = {}
    total = len(dataset) if is_folder else None
    with tqdm(total=total, desc="reading images", unit="img", disable=not progress) as bar:
        for batch in loader:
            skips.add_skipped(batch["skipped"])
            bar.update(batch["num_items"])
            if "image" not in batch:
                continue
            for image, label in zip(batch["image"], batch["label"].tolist()):
                labels[label] += 1
                if len(preview) < max_classes or label in preview:
                    slot = preview.setdefault(label, [])
                    if len(slot) < per_class:
                        slot.append(image)
    report = InspectReport(
        source=str(cfg.source),
        format="folder" if is_folder else "shards",
        num_images=sum(labels.values()),
        num_skipped=skips.total,
        skipped_by_reason=skips.as_dict(),
        label_counts={k: v for k, v in sorted(labels.items()) if k >= 0},
        class_names=list(dataset.classes) if is_folder else [],
    )
    if grid_path is not None and preview:
        keys = sorted(preview)
        rows = [preview[k] + [torch.zeros_like(preview[k][0])] * (per_class - len(preview[k])) for k in keys]
        names = report.class_names
        row_labels = [names[k] if 0 <= k < len(names) else (f"class {k}" if k >= 0 else "") for k in keys]
        images = torch.stack([img for row in rows for img in row])
        report.grid = str(
            save_grid(images, grid_path, nrow=per_class, row_labels=row_labels if any(row_labels) else None)
        )
    return report
