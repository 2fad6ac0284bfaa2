"""Render a `vfmvae report` page in headless Chromium and check it (see `vfmvae.report_check`).

    apt-get install chromium        # or: python -m playwright install chromium (downloads a browser)
    python scripts/check_report_in_chromium.py runs/demo/report/index.html --screenshot runs/demo/report/page.png

Exit status 0 when every <img> decoded (naturalWidth > 0), the console shows no errors and the page is not
blank; 1 with the problems listed otherwise; 2 when playwright or Chromium is missing.
tests/test_report_browser.py runs the same check in the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", type=Path)
    p.add_argument("--screenshot", type=Path, default=None)
    p.add_argument("--chromium", default=None, help="Chromium executable (default: $VFMVAE_CHROMIUM or PATH)")
    args = p.parse_args()
    from vfmvae.report_check import check_page, find_chromium

    try:
        import playwright  # noqa: F401
    except ImportError:
        print('playwright is not installed: pip install "vfmvae[dev]"', file=sys.stderr)
        return 2
    if not (args.chromium or find_chromium()):
        print("no Chromium found: apt-get install chromium, or set VFMVAE_CHROMIUM", file=sys.stderr)
        return 2
    result = check_page(args.page, screenshot=args.screenshot, executable=args.chromium)
    problems = result.problems()
    print(f"{result.images} images, {len(result.broken_images)} broken, {len(result.console_errors)} console errors")
    for line in problems:
        print(f"  {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
