"""CKNNA at N = 10,000, D = 1024 (official preprocessing + topk 10), optionally side by side with platonic-rep.

    python cknna.py --n 10000 --dim 1024
    python cknna.py --n 10000 --dim 1024 --official /tmp/platonic-rep      # + the reference, same inputs

Ours works on the k-nearest-neighbour pairs only (O(N k) memory after the top-k); platonic-rep's
`AlignmentMetrics.cknna` builds dense N x N masks and kernels and multiplies two of them (O(N^3)). The reference
is imported from a clone outside the repository (git clone https://github.com/minyoungg/platonic-rep); its
module-level imports that CKNNA does not use (torchaudio, scikit-learn, pymp) are stubbed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

import torch
from common import emit

from vfmvae.alignment import cknna, preprocess


def _platonic_metrics(clone: Path):
    for name in ("torchaudio", "torchaudio.functional", "sklearn", "sklearn.cross_decomposition", "pymp"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["sklearn.cross_decomposition"].CCA = None  # type: ignore[attr-defined]
    sys.modules["torchaudio"].functional = sys.modules["torchaudio.functional"]  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location("platonic_metrics", clone / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AlignmentMetrics


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--official", type=Path, default=None, help="a clone of minyoungg/platonic-rep")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.n, args.dim, generator=g)
    b = a[:, : args.dim // 2] + torch.randn(args.n, args.dim // 2, generator=g)
    a, b = preprocess(a).to(args.device), preprocess(b).to(args.device)
    value, seconds = _timed(lambda: cknna(a, b, args.topk))
    result = {
        "benchmark": "cknna",
        "n": args.n,
        "dim": args.dim,
        "topk": args.topk,
        "device": args.device,
        "cknna": value,
        "seconds": round(seconds, 2),
    }
    if args.official is not None:
        metrics = _platonic_metrics(args.official)
        reference, ref_seconds = _timed(lambda: metrics.cknna(a, b, topk=args.topk))
        result.update(
            cknna_official=reference,
            abs_diff=abs(value - reference),
            seconds_official=round(ref_seconds, 2),
            speedup=round(ref_seconds / seconds, 1),
        )
    emit(result, args.json)
    if args.official is not None and result["abs_diff"] > 1e-5:
        raise SystemExit("CKNNA differs from platonic-rep's: the timing is void")


if __name__ == "__main__":
    main()
