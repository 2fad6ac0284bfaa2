"""The result table of a pipeline folder: each measured figure beside the paper's, with its protocol and time.

Read from what the run left: OUT/pipeline.json (the steps, their times and which `--json` holds a result) and the
result files themselves (`eval recon` / `eval gen` JSON, and the sample folder's settings.json for the seeds and
the guidance). Used by `vfmvae report` (the page's first section) and printed by `vfmvae pipeline run|status`.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from vfmvae.pipeline.paper import GEN_METRICS, METRIC_NAMES, PAPER, RECON_METRICS

__all__ = ["read_summary", "result_rows", "results_html", "results_text"]

log = logging.getLogger(__name__)


def read_summary(root: Path) -> dict[str, Any] | None:
    """OUT/pipeline.json, or None where there is none; a damaged one is None with a warning (the report and the
    status do not depend on it: the step records in OUT/.pipeline/ are the truth)."""
    path = Path(root) / "pipeline.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:  # JSON errors, bytes that are not UTF-8, thousands of brackets
        log.warning("%s: not valid JSON (%s); the result table is left out", path, type(err).__name__)
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("steps"), list):
        log.warning("%s: not a pipeline summary (no list of steps); the result table is left out", path)
        return None
    steps = [s for s in summary["steps"] if isinstance(s, dict) and isinstance(s.get("name"), str)]
    if len(steps) < len(summary["steps"]):
        log.warning("%s: skipped %d step entr(ies) without a name", path, len(summary["steps"]) - len(steps))
    return {**summary, "steps": steps}


def _read_json(path: str | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except ValueError:
        return None


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "-"


def result_rows(root: Path) -> list[dict[str, Any]]:
    """One row per result step: label, kind (recon | gen), guidance, measured and paper figures, protocol, time."""
    summary = read_summary(root) or {"steps": []}
    rows = []
    for step in summary["steps"]:
        spec = step.get("result")
        if not (isinstance(spec, dict) and isinstance(spec.get("json"), str) and isinstance(spec.get("label"), str)):
            continue
        data = _read_json(spec["json"])
        samples = spec.get("samples") if isinstance(spec.get("samples"), str) else None
        settings = _read_json(str(Path(samples) / "settings.json")) if samples else None
        kind = "gen" if samples or (data and "fid" in data) else "recon"
        metrics = GEN_METRICS if kind == "gen" else RECON_METRICS
        measured = {m: data.get(m) for m in metrics} if data else {}
        protocol = (data or {}).get("protocol", {})
        guidance = None
        if settings is not None:
            scale = float(settings.get("sampler", {}).get("cfg_scale", 1.0))
            guidance = f"CFG {scale:g}" if scale != 1.0 else "none"
        paper_entry = PAPER.get(spec.get("paper") or "", {})
        if kind == "recon":
            paper = paper_entry.get("recon", {})
        else:
            paper = paper_entry.get("cfg" if guidance not in (None, "none") else "no_cfg", {})
        if kind == "recon":
            details = {
                "images": protocol.get("num_images"),
                "Inception": _short(protocol.get("inception_sha256")) if protocol.get("inception_sha256") else "none",
                "LPIPS": _short(protocol.get("lpips_sha256")) if protocol.get("lpips_sha256") else "none",
                "latent": protocol.get("latent", "-"),
            }
        else:
            details = {
                "samples": protocol.get("num_samples"),
                "reference": f"{Path(str(protocol.get('reference', '-'))).name} "
                f"({protocol.get('num_reference_images', 0)} images, {protocol.get('reference_statistics', '-')})",
                "Inception": _short(protocol.get("inception_sha256")),
                "seeds": _seeds(settings),
            }
        rows.append(
            {
                "label": spec["label"],
                "kind": kind,
                "guidance": guidance,
                "measured": measured,
                "paper": paper,
                "paper_label": paper_entry.get("label"),
                "paper_source": paper_entry.get("source"),
                "protocol": details,
                "step": step["name"],
                "seconds": step.get("seconds"),
                "status": step.get("status"),
            }
        )
    return rows


def _seeds(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "-"
    sampler = settings.get("sampler", {})
    return (
        f"sample i: seed ({settings.get('seed')}, i); labels {settings.get('classes')}; preset "
        f"{settings.get('preset')}: {sampler.get('sampler')}, {sampler.get('steps')} steps"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pair(row: dict[str, Any], metric: str) -> str:
    measured = row["measured"].get(metric)
    paper = row["paper"].get(metric)
    text = "not run" if not row["measured"] else ("skipped" if measured is None else _cell(measured))
    return f"{text} ({_cell(paper)})" if paper is not None else text


def _time(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"


def results_text(root: Path) -> str:
    """The table as plain text (measured, the paper's figure in parentheses)."""
    lines = []
    for kind, metrics, title in (("recon", RECON_METRICS, "reconstruction"), ("gen", GEN_METRICS, "generation")):
        rows = [r for r in result_rows(root) if r["kind"] == kind]
        if not rows:
            continue
        head = ["result", *(["guidance"] if kind == "gen" else []), *(METRIC_NAMES[m] for m in metrics)]
        body = [
            [r["label"], *([r["guidance"] or "-"] if kind == "gen" else []), *(_pair(r, m) for m in metrics)]
            for r in rows
        ]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines.append(f"{title} (measured, the paper's figure in parentheses):")
        for row in [head, *body]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def results_html(root: Path) -> str | None:
    """The report's first section: the result tables, the protocol of each figure, and the time of every step."""
    summary = read_summary(root)
    if summary is None:
        return None
    rows = result_rows(root)
    parts = [
        "<h2>Results</h2>",
        f"<p>Pipeline <code>{html.escape(str(summary.get('recipe')))}</code>. Each cell: the measured figure, the "
        "paper's in parentheses (where the paper gives one for this setting).</p>",
    ]
    for kind, metrics, title in (("recon", RECON_METRICS, "Reconstruction"), ("gen", GEN_METRICS, "Generation")):
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        head = ["result", *(["guidance"] if kind == "gen" else []), *(METRIC_NAMES[m] for m in metrics), "protocol"]
        body = []
        for r in chosen:
            cells = [r["label"], *([r["guidance"] or "-"] if kind == "gen" else []), *(_pair(r, m) for m in metrics)]
            protocol = "; ".join(f"{k}: {_cell(v)}" for k, v in r["protocol"].items())
            if r["paper_source"]:
                protocol += f"; paper: {r['paper_label']} ({r['paper_source']})"
            body.append([*cells, protocol])
        parts.append(f"<h3>{title}</h3>" + _html_table(head, body))
    times = [
        [s["name"], s.get("title") or "", s.get("status") or "", _time(s.get("seconds"))] for s in summary["steps"]
    ]
    parts.append("<h3>Time per step</h3>" + _html_table(["step", "what", "status", "time"], times))
    return "\n".join(parts)


def _html_table(head: list[str], body: list[list[str]]) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{header}</tr>{rows}</table>"
