"""`vfmvae report RUN_DIR`: an HTML page of a run (or of a folder of runs, like the demo's)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="an HTML page of a tokenizer/diffusion run or a demo folder",
        description="Build RUN_DIR/report/index.html: loss curves (from metrics.jsonl), reconstruction "
        "and sample grids, metric tables, SE-CKNNA, and the commands (with full-scale counterparts) when "
        "the folder records them (pipeline.json, written by `vfmvae pipeline run`, whose result table beside the "
        "paper's figures opens the page).",
    )
    r.add_argument("run_dir", type=Path, help="a training run folder, or a folder holding several (e.g. runs/demo)")
    r.add_argument("--out", type=Path, default=None, help="HTML file (default: RUN_DIR/report/index.html)")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vfmvae.report import build_report

    page = build_report(args.run_dir, args.out)
    print(f"report: {page}")
    return 0
