"""`vfmvae report RUN_DIR`: one HTML page for a tokenizer run, a diffusion run or a whole demo folder.

The page is built from what runs leave behind, never from memory: `metrics.jsonl` (loss curves, drawn as PNG
plots), `config.yaml`, snapshot and sample grids, `recon-*.json` (reconstruction metrics), `samples/settings.json`,
`align_report/se_cknna.json`, and `commands.json` (the commands that produced the folder, with their full-scale
counterparts, written by the demo). Images are linked by relative paths, so the folder can be copied as a whole.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import read_yaml

__all__ = ["build_report", "find_runs"]

log = logging.getLogger(__name__)


def find_runs(root: Path) -> list[Path]:
    """Training runs (a `metrics.jsonl` next to a `config.yaml`) at or below `root`, at most two levels down."""
    runs = []
    for depth in range(3):
        for metrics in sorted(root.glob("/".join(["*"] * depth + ["metrics.jsonl"]))):
            if (metrics.parent / "config.yaml").is_file():
                runs.append(metrics.parent)
    return runs


def _kind(run: Path) -> str:
    config = read_yaml((run / "config.yaml").read_text(), str(run / "config.yaml")) or {}
    return "diffusion" if "transport" in config else "tokenizer"


def _records(run: Path) -> list[dict[str, Any]]:
    out, torn = [], []
    for number, line in enumerate((run / "metrics.jsonl").read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill or a full disk: the rest of the log still counts
            torn.append(number)
    if torn:
        log.warning("%s: skipped %d torn line(s) (line %s)", run / "metrics.jsonl", len(torn),
                    ", ".join(map(str, torn[:5])) + (", ..." if len(torn) > 5 else ""))
    return out


def _plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    keys = sorted({k for r in records for k, v in r.items() if k.startswith("loss") and isinstance(v, (int, float))})
    if not records or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rel(path: Path, page: Path) -> str:
    return html.escape(os.path.relpath(path, page.parent))


def _img(path: Path, page: Path, caption: str) -> str:
    return (f'<figure><img src="{_rel(path, page)}" alt="{html.escape(caption)}" loading="lazy">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(run: Path, page: Path) -> str:
    kind, records = _kind(run), _records(run)
    parts = [f"<h2>{kind} run: {html.escape(str(run))}</h2>"]
    plot = _plot_losses(records, page.parent / "plots" / f"{run.name}-losses.png", f"{kind} losses ({run.name})")
    if plot:
        parts.append(_img(plot, page, f"loss curves of {run.name} (from metrics.jsonl)"))
    if records:
        last = records[-1]
        shown = {k: v for k, v in last.items() if isinstance(v, (int, float))}
        parts.append("<p>Last logged record:</p>" + _table([shown], list(shown)))
    # RUN/grids; runs written before it keep theirs in snapshots/ (tokenizer) or samples/ (diffusion)
    old = "snapshots" if kind == "tokenizer" else "samples"
    grids = sorted((run / "grids").glob("*.png")) or sorted((run / old).glob("*.png"))
    if grids:
        what = "inputs beside EMA reconstructions" if kind == "tokenizer" else "EMA samples decoded by the tokenizer"
        parts.append(_img(grids[-1], page, f"{grids[-1].name}: {what}"))
    return "\n".join(parts)


def build_report(root: str | Path, out: str | Path | None = None) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder not found: {root}")
    page = Path(out) if out else root / "report" / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    commands = root / "commands.json"
    steps = json.loads(commands.read_text()) if commands.is_file() else []
    if (root / "data" / "preview.png").is_file():
        sections.append("<h2>Data</h2>" + _img(root / "data" / "preview.png", page, "the synthetic set, one row per class"))
    recon = sorted(root.glob("recon-*.json"))
    if recon:
        rows = []
        for path in recon:
            data = json.loads(path.read_text())
            rows.append({"run": path.stem, **{k: v for k, v in data.items() if isinstance(v, (int, float))}})
        columns = ["run"] + [c for c in ("psnr", "ssim", "lpips", "rfid", "ris", "num_images") if any(c in r for r in rows)]
        parts = ["<h2>Reconstruction (held-out images)</h2>", _table(rows, columns),
                 "<p>rFID and LPIPS appear only when their weight files were given; otherwise they were skipped.</p>"]
        for path in recon:
            grid = root / path.stem / "comparison.png"
            if grid.is_file():
                parts.append(_img(grid, page, f"{path.stem}: inputs beside reconstructions"))
        sections.append("\n".join(parts))
    sections += [_run_section(run, page) for run in find_runs(root)]
    for settings in sorted(root.glob("*/settings.json")):
        if (settings.parent / "grid.png").is_file():
            cfg = json.loads(settings.read_text())
            sections.append("<h2>Samples: " + html.escape(settings.parent.name) + "</h2>"
                            + _img(settings.parent / "grid.png", page, "class-conditional samples, one class per column")
                            + "<pre>" + html.escape(json.dumps(cfg, indent=1)) + "</pre>")
    for align in sorted(root.glob("*/se_cknna.json")):
        data = json.loads(align.read_text())
        transforms = list(next(iter(data["table"].values())))
        se = data.get("se_cknna", {})  # absent in reports written before the mean was added
        rows = [{"model": m, **row, "SE-CKNNA": "-" if se.get(m) is None else se[m]} for m, row in data["table"].items()]
        sections.append(f"<h2>SE-CKNNA ({html.escape(align.parent.name)})</h2><p>{html.escape(data['definition'])}</p>"
                        + _table(rows, ["model", *transforms, "SE-CKNNA"]) + _img(align.parent / "se_cknna.png", page, "SE-CKNNA per transformation"))
    if steps:
        rows = "".join(f"<tr><td>{html.escape(s['title'])}</td><td><code>{html.escape(s['command'])}</code></td>"
                       f"<td><code>{html.escape(s.get('full_scale', '') or '-')}</code></td></tr>" for s in steps)
        sections.append("<h2>Commands</h2><p>What produced this folder, and the same step at full scale.</p>"
                        f"<table><tr><th>step</th><th>command (this run)</th><th>at full scale</th></tr>{rows}</table>")
    if not sections:
        raise FileNotFoundError(f"{root} holds no run (metrics.jsonl + config.yaml), samples, reconstructions or reports")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%;"
             "image-rendering:pixelated}figure{margin:1em 0}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}code,pre{font-size:12px}")
    body = "\n".join(f"<section>{s}</section>" for s in sections)
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>vfmvae report: {html.escape(str(root))}</title>"
            f"<style>{style}</style></head><body><h1>vfmvae report: {html.escape(str(root))}</h1>\n{body}\n</body></html>\n")
    atomic_write_text(page, text)
    return page
