"""`vfmvae report RUN_DIR`: one HTML page for a tokenizer run, a diffusion run or a whole demo folder.

The page is built from what runs leave behind, never from memory: `metrics.jsonl` (loss curves, drawn as PNG
plots: one small panel per term, x in images), `eval/records.jsonl` (evaluation while training, as curves beside
them), `config.yaml`, snapshot and sample grids, `recon-*.json` (reconstruction metrics), `samples/settings.json`,
`*/se_cknna.json`, and the commands that produced the folder with their full-scale counterparts (`pipeline.json`,
written by `vfmvae pipeline run`, whose result table beside the paper's figures opens the page; or the
`commands.json` of older demo folders). Images are linked by relative paths, so the folder can be copied as a whole.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import read_yaml

__all__ = ["build_report", "find_runs", "panel_scale"]

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
        log.warning(
            "%s: skipped %d torn line(s) (line %s)",
            run / "metrics.jsonl",
            len(torn),
            ", ".join(map(str, torn[:5])) + (", ..." if len(torn) > 5 else ""),
        )
    return out


def _commands(root: Path, summary: dict[str, Any] | None) -> list[dict[str, str]]:
    """The commands that made the folder: a pipeline's steps (OUT/pipeline.json), else the older demo's
    `commands.json` (a list of {title, command, full_scale?}). A damaged file or entry is skipped with a warning: the
    rest of the page does not depend on it."""
    if summary is not None:
        path = root / "pipeline.json"
        steps: Any = [
            {
                "title": s.get("title"),
                "command": s.get("command"),
                "full_scale": s.get("full_scale") or s.get("torchrun"),
            }
            if isinstance(s, dict)
            else s
            for s in summary["steps"]
        ]
    else:
        path = root / "commands.json"
        if not path.is_file():
            return []
        try:
            steps = json.loads(path.read_text())
        except (ValueError, RecursionError) as err:  # JSON errors, bytes that are not UTF-8, thousands of brackets
            log.warning("%s: not valid JSON (%s); the commands table is left out", path, type(err).__name__)
            return []
    if not isinstance(steps, list):
        log.warning("%s: not a list of commands; the commands table is left out", path)
        return []
    good = [
        s
        for s in steps
        if isinstance(s, dict)
        and isinstance(s.get("title"), str)
        and isinstance(s.get("command"), str)
        and isinstance(s.get("full_scale") or "", str)
    ]
    if len(good) < len(steps):
        log.warning("%s: skipped %d entr(ies) without a title and command text", path, len(steps) - len(good))
    return good


def _x_axis(records: list[dict[str, Any]], config: dict[str, Any]) -> tuple[str, Any]:
    """Images seen for both trainers: the records' "images", else step x the run's batch size (diffusion logs
    written before records carried images), else the step."""
    batch = (config.get("run") or {}).get("batch_size") if isinstance(config, dict) else None
    if records and all(isinstance(r.get("images"), (int, float)) for r in records):
        return "images", lambda r: r["images"]
    if isinstance(batch, int) and batch > 0:
        return (
            "images (step x batch size)",
            lambda r: r["images"] if isinstance(r.get("images"), (int, float)) else r["step"] * batch,
        )
    return "step", lambda r: r["step"]


def _series(records: list[dict[str, Any]], keys: list[str], x_of) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for key in keys:
        points = [
            (x_of(r), r[key])
            for r in records
            if isinstance(r.get(key), (int, float)) and "step" in r and math.isfinite(r[key])
        ]
        if points:
            out[key] = points
    return out


def panel_scale(values: list[float]) -> str:
    """ "log" for a positive term that spans more than 1.5 decades (a loss falling from 600 to 2), else "linear"."""
    return "log" if values and min(values) > 0 and max(values) / min(values) > 10**1.5 else "linear"


def _plot_panels(
    series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str, note: str = ""
) -> Path | None:
    """One small panel per term, each with its own y scale (log where the term is positive and spans more than
    1.5 decades), so that a large term (the tokenizer's KL, ~600) does not flatten the others to a line."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.3 * rows + 0.5), squeeze=False)
    for ax, (key, points) in zip(axes.flat, series.items()):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o" if len(points) < 12 else None, markersize=3, linewidth=1.2)
        ax.set_yscale(panel_scale(ys))
        # plain tick values: no "+2.955e2" or "1e-7+1.00056" offset above the axis, and image counts in full
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), ScalarFormatter):
                axis.get_major_formatter().set_useOffset(False)
        if isinstance(ax.xaxis.get_major_formatter(), ScalarFormatter):
            ax.xaxis.get_major_formatter().set_scientific(False)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # room for seven-digit image counts
        ax.set_title(f"{key}{' (log)' if ax.get_yscale() == 'log' else ''}: {ys[-1]:.4g}", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel(xlabel, fontsize=7)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_losses(
    records: list[dict[str, Any]], path: Path, title: str, config: dict[str, Any] | None = None
) -> Path | None:
    keys = sorted({k for r in records for k, v in r.items() if k.startswith("loss") and isinstance(v, (int, float))})
    xlabel, x_of = _x_axis(records, config or {})
    return _plot_panels(_series(records, keys, x_of), path, title, xlabel)


EVAL_TIMING = ("eval/seconds", "eval/images_per_s")


def _eval_records(run: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation points: RUN/eval/records.jsonl (the evaluator's own log), plus eval/ keys found in metrics.jsonl
    at steps that file does not hold; one record per step, in step order."""
    from vfmvae.training.online_eval import read_eval_records

    by_step = {r["step"]: r for r in records if "step" in r and any(k.startswith("eval/") for k in r)}
    by_step.update({r["step"]: r for r in read_eval_records(run)})
    return [by_step[s] for s in sorted(by_step)]


def _eval_section(run: Path, page: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    evals = _eval_records(run, records)
    if not evals:
        return []
    keys = sorted(
        {
            k
            for r in evals
            for k, v in r.items()
            if k.startswith("eval/") and k not in EVAL_TIMING and isinstance(v, (int, float))
        }
    )
    xlabel, x_of = _x_axis(evals, config)
    protocol = evals[-1].get("eval/protocol") or {}
    weights = " ".join(str(protocol.get(k, "")) for k in ("inception_weights", "lpips_weights"))
    note = (
        "RANDOM-INIT metric networks: the values show the pipeline, they compare with nothing"
        if "RANDOM-INIT" in weights
        else ""
    )
    parts = []
    plot = _plot_panels(
        _series(evals, keys, x_of),
        page.parent / "plots" / f"{run.name}-eval.png",
        f"evaluation while training ({run.name})",
        xlabel,
        note,
    )
    if plot:
        parts.append(
            _img(
                plot, page, f"evaluation curves of {run.name} (RUN/eval/records.jsonl)" + (f"; {note}" if note else "")
            )
        )
    last = evals[-1]
    shown = {
        "step": last["step"],
        **{k[len("eval/") :]: v for k, v in last.items() if k.startswith("eval/") and isinstance(v, (int, float))},
    }
    parts.append(
        "<p>Last evaluation (seconds and images/s of the evaluation itself):</p>" + _table([shown], list(shown))
    )
    if protocol:
        parts.append(
            "<details><summary>evaluation protocol</summary><pre>"
            + html.escape(json.dumps(protocol, indent=1))
            + "</pre></details>"
        )
    grids = sorted((run / "eval" / "grids").glob("*.png"))
    if grids:
        parts.append(
            _img(grids[-1], page, f"{grids[-1].name}: held-out inputs beside EMA reconstructions (evaluation)")
        )
    return parts


GRID_COLUMNS = 8  # `vfmvae sample` draws its grid.png of the first 64 samples 8 to a row


def sample_grid_caption(folder: Path, columns: int = GRID_COLUMNS) -> str:
    """What the grid of a sample folder shows, from the labels actually drawn (samples.npz `arr_1`): one class per
    column when every column holds one class (`--classes balanced` with 8 classes), else the class of each cell."""
    import numpy as np

    try:
        with np.load(folder / "samples.npz") as npz:
            labels = [int(v) for v in npz["arr_1"][: columns * columns]]
    except (OSError, KeyError, ValueError):
        return "class-conditional samples (their labels are not recorded in samples.npz)"
    if not labels:
        return "class-conditional samples"
    column_classes = [sorted(set(labels[c::columns])) for c in range(min(columns, len(labels)))]
    if len(labels) > columns and all(len(classes) == 1 for classes in column_classes):
        names = ", ".join(str(classes[0]) for classes in column_classes)
        return f"class-conditional samples, one class per column (classes {names}, left to right)"
    rows = [labels[r : r + columns] for r in range(0, len(labels), columns)]
    cells = "; ".join(" ".join(map(str, row)) for row in rows)
    return f"class-conditional samples; the class of each image, row by row ({columns} per row): {cells}"


def _rel(path: Path, page: Path) -> str:
    return html.escape(os.path.relpath(path, page.parent))


def _img(path: Path, page: Path, caption: str) -> str:
    return (
        f'<figure><img src="{_rel(path, page)}" alt="{html.escape(caption)}" loading="lazy">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_section(run: Path, page: Path) -> str:
    kind, records = _kind(run), _records(run)
    config = read_yaml((run / "config.yaml").read_text(), str(run / "config.yaml")) or {}
    parts = [f"<h2>{kind} run: {html.escape(str(run))}</h2>"]
    plot = _plot_losses(
        records, page.parent / "plots" / f"{run.name}-losses.png", f"{kind} losses ({run.name})", config
    )
    if plot:
        parts.append(_img(plot, page, f"loss curves of {run.name} (from metrics.jsonl), one panel per term"))
    parts += _eval_section(run, page, records, config)
    if records:
        last = next((r for r in reversed(records) if any(k.startswith("loss") for k in r)), records[-1])
        shown = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not k.startswith("eval/")}
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
    from vfmvae.pipeline.table import read_summary, results_html

    results = results_html(root)  # a pipeline folder: the result table beside the paper's figures comes first
    if results:
        sections.append(results)
    steps = _commands(root, read_summary(root))
    if (root / "data" / "preview.png").is_file():
        sections.append(
            "<h2>Data</h2>" + _img(root / "data" / "preview.png", page, "the synthetic set, one row per class")
        )
    recon = sorted(root.glob("recon-*.json"))
    if recon:
        rows = []
        for path in recon:
            data = json.loads(path.read_text())
            rows.append({"run": path.stem, **{k: v for k, v in data.items() if isinstance(v, (int, float))}})
        columns = ["run"] + [
            c for c in ("psnr", "ssim", "lpips", "rfid", "ris", "num_images") if any(c in r for r in rows)
        ]
        parts = [
            "<h2>Reconstruction (held-out images)</h2>",
            _table(rows, columns),
            "<p>rFID and LPIPS appear only when their weight files were given; otherwise they were skipped.</p>",
        ]
        for path in recon:
            grid = root / path.stem / "comparison.png"
            if grid.is_file():
                parts.append(_img(grid, page, f"{path.stem}: inputs beside reconstructions"))
        sections.append("\n".join(parts))
    sections += [_run_section(run, page) for run in find_runs(root)]
    for settings in sorted(root.glob("*/settings.json")):
        if (settings.parent / "grid.png").is_file():
            cfg = json.loads(settings.read_text())
            sections.append(
                "<h2>Samples: "
                + html.escape(settings.parent.name)
                + "</h2>"
                + _img(settings.parent / "grid.png", page, sample_grid_caption(settings.parent))
                + "<pre>"
                + html.escape(json.dumps(cfg, indent=1))
                + "</pre>"
            )
    for align in sorted(root.glob("*/se_cknna.json")):
        data = json.loads(align.read_text())
        transforms = list(next(iter(data["table"].values())))
        se = data.get("se_cknna", {})  # absent in reports written before the mean was added
        rows = [
            {"model": m, **row, "SE-CKNNA": "-" if se.get(m) is None else se[m]} for m, row in data["table"].items()
        ]
        sections.append(
            f"<h2>SE-CKNNA ({html.escape(align.parent.name)})</h2><p>{html.escape(data['definition'])}</p>"
            + _table(rows, ["model", *transforms, "SE-CKNNA"])
            + _img(align.parent / "se_cknna.png", page, "SE-CKNNA per transformation")
        )
    if steps:
        rows = "".join(
            f"<tr><td>{html.escape(s['title'])}</td><td><code>{html.escape(s['command'])}</code></td>"
            f"<td><code>{html.escape(s.get('full_scale', '') or '-')}</code></td></tr>"
            for s in steps
        )
        sections.append(
            "<h2>Commands</h2><p>What produced this folder, and the same step at full scale (for the steps "
            "that train, cache or sample: under torchrun).</p>"
            f"<table><tr><th>step</th><th>command (this run)</th><th>at full scale</th></tr>{rows}</table>"
        )
    if not sections:
        raise FileNotFoundError(
            f"{root} holds no run (metrics.jsonl + config.yaml), samples, reconstructions or reports"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%;"
        "image-rendering:pixelated}figure{margin:1em 0}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}code,pre{font-size:12px}"
    )
    body = "\n".join(f"<section>{s}</section>" for s in sections)
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vfmvae report: {html.escape(str(root))}</title>"
        f"<style>{style}</style></head><body><h1>vfmvae report: {html.escape(str(root))}</h1>\n{body}\n</body></html>\n"
    )
    atomic_write_text(page, text)
    return page
