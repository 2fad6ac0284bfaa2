"""Regenerate tests/data/cknna_reference with the official alignment metrics.

Procedure (tests/data/cknna_reference/README.md): seeded synthetic feature pairs, the VFM-VAE preprocessing
(exact 0.95 clip, then row L2-normalisation), and the metric functions of VFM-VAE's
``tools/evaluate_alignment/metrics.py`` and platonic-rep's ``metrics.py``, run unmodified. Run in the
reference environment:

    python scripts/parity/make_cknna_reference.py --official /tmp/vfmvae-parity/src/VFM-VAE \
        --platonic-rep /tmp/vfmvae-parity/src/platonic-rep --out DIR
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import _common

TOPK = 10
Q = 0.95
OUTPUT_NAMES = ["features.safetensors", "expected.json"]


def stub_unused_imports() -> None:
    """Both metrics files import torchaudio and scikit-learn at module level, for metrics not covered here
    (svcca, edit_distance_knn); empty stand-ins keep those packages out of the environment. pymp is optional
    upstream and simply left absent."""
    for name in ("torchaudio", "torchaudio.functional", "sklearn", "sklearn.cross_decomposition"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchaudio"].functional = sys.modules["torchaudio.functional"]
    sys.modules["sklearn.cross_decomposition"].CCA = type("CCA", (), {})


def load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def student_t2(shape: tuple[int, ...], g: Any) -> Any:
    import torch

    z = torch.randn(shape, generator=g)
    chi2 = (torch.randn(shape + (2,), generator=g) ** 2).sum(-1)
    return z / torch.sqrt(chi2 / 2)


def make_features() -> dict[str, tuple[Any, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 64, generator=g)
    w = torch.randn(64, 48, generator=g) / 8
    noise = torch.randn(300, 48, generator=g)
    cases = {"correlated": (a, a @ w + 0.5 * noise)}
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 32, generator=g)
    cases["independent"] = (a, torch.randn(200, 40, generator=g))
    g = torch.Generator().manual_seed(2)
    a = student_t2((250, 24), g)
    cases["heavy_tailed"] = (a, a[:, :16] * 3 + student_t2((250, 16), g))
    cases["self"] = (cases["correlated"][0], cases["correlated"][0])
    return cases


def load_features(path: Path) -> dict[str, tuple[Any, Any]]:
    from safetensors.torch import load_file

    stored = load_file(path)
    cases = {case: (stored[f"{case}_A"], stored[f"{case}_B"]) for case in ("correlated", "independent", "heavy_tailed")}
    cases["self"] = (stored["self_A"], stored["self_A"])
    return cases


def all_metrics(metrics_cls: Any, a: Any, b: Any) -> dict[str, float]:
    return {
        "cknna": float(metrics_cls.cknna(a, b, topk=TOPK, distance_agnostic=False, unbiased=True)),
        "mutual_knn": float(metrics_cls.mutual_knn(a, b, topk=TOPK)),
        "cka": float(metrics_cls.cka(a, b, kernel_metric="ip", unbiased=False)),
        "unbiased_cka": float(metrics_cls.unbiased_cka(a, b, kernel_metric="ip")),
    }


def clip_info(x: Any) -> dict[str, float | int]:
    index = int(Q * x.numel())
    threshold = x.reshape(-1).abs().sort().values[index]
    return {"threshold": threshold.item(), "index": index, "frac_clipped": (x.abs() > threshold).float().mean().item()}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0], "checkout of tianciB/VFM-VAE at b3a752a")
    p.add_argument("--platonic-rep", type=Path, required=True, help="checkout of minyoungg/platonic-rep at dcd76ba")
    p.add_argument(
        "--features",
        type=Path,
        help="take the inputs from this features.safetensors instead of "
        "drawing them (checks the metrics alone, e.g. against tests/data/cknna_reference)",
    )
    args = p.parse_args()
    if args.features is not None and not args.features.is_file():
        raise SystemExit(f"--features {args.features}: no such file")
    official = _common.check_folder(args.official, "tools/evaluate_alignment/metrics.py", "--official")
    platonic = _common.check_folder(args.platonic_rep, "metrics.py", "--platonic-rep")
    out = _common.prepare_out(args.out, OUTPUT_NAMES)
    _common.pin_runtime()
    import torch
    import torch.nn.functional as F

    stub_unused_imports()
    vfm = load_module(official / "tools/evaluate_alignment/metrics.py", "vfm_alignment_metrics")
    plat = load_module(platonic / "metrics.py", "platonic_metrics")

    def official_preprocess(x: Any, module: Any = vfm, exact: bool = True) -> Any:
        # load_and_process_features without the .cuda() transfer: clip, then row L2-normalisation.
        return F.normalize(module.remove_outliers(x.float(), q=Q, exact=exact), dim=-1)

    cases = make_features() if args.features is None else load_features(args.features)
    features: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    for case, (a, b) in cases.items():
        if case == "self":
            features["self_A"] = a
        else:
            features[f"{case}_A"], features[f"{case}_B"] = a, b
        pa, pb = official_preprocess(a), official_preprocess(b)
        ia, ib = official_preprocess(a, plat, exact=False), official_preprocess(b, plat, exact=False)
        expected[case] = {
            "official_float32": all_metrics(vfm.AlignmentMetrics, pa, pb),
            "official_float64": all_metrics(vfm.AlignmentMetrics, pa.double(), pb.double()),
            "raw_float64": all_metrics(vfm.AlignmentMetrics, a.double(), b.double()),
            "platonic_rep_float64": all_metrics(plat.AlignmentMetrics, pa.double(), pb.double()),
            "platonic_rep_float32": all_metrics(plat.AlignmentMetrics, pa, pb),
            "platonic_rep_inexact_quantile_float64": all_metrics(plat.AlignmentMetrics, ia.double(), ib.double()),
            "official_float64_swapped_AB": all_metrics(vfm.AlignmentMetrics, pb.double(), pa.double()),
        }
        ca, cb = clip_info(a), clip_info(b)
        thresholds[case] = {"A": ca["threshold"], "B": cb["threshold"], "A_index": ca["index"],
                            "B_index": cb["index"], "A_frac_clipped": ca["frac_clipped"],
                            "B_frac_clipped": cb["frac_clipped"]}  # fmt: skip

    expected["notes"] = {
        "sources": {
            "vfm_vae": "github.com/tianciB/VFM-VAE @ b3a752a3f73a292f8f59a5f178e5de69575db6c4, "
            "tools/evaluate_alignment/metrics.py",
            "platonic_rep": "github.com/minyoungg/platonic-rep @ dcd76ba3c950c1b197a2ae8b1c6713535c94ecf9, metrics.py",
        },
        "versions": {
            **_common.versions("torch", "numpy"),
            "device": "cpu",
            "torch_num_threads": torch.get_num_threads(),
        },  # fmt: skip
        "metric_args": "topk=10 for cknna and mutual_knn; cknna(unbiased=True, distance_agnostic=False); "
        "cka(kernel_metric='ip', unbiased=False); unbiased_cka = cka(unbiased=True)",
        "clip_thresholds": thresholds,
        "generated_by": "scripts/parity/make_cknna_reference.py",
    }
    _common.save_tensors(out / "features.safetensors", features)
    _common.save_json(out / "expected.json", expected)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
