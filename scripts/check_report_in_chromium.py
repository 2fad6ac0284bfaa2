"""Render a `vfmvae report` page in headless Chromium and check that every image loaded.

    pip install playwright==1.49.0 && python -m playwright install chromium     # needs internet once
    python scripts/check_report_in_chromium.py runs/demo/report/index.html --screenshot runs/demo/report/page.png

Exit status 0 when the page loaded and every <img> has a decoded, non-empty bitmap (naturalWidth > 0);
otherwise 1 with the broken sources listed. The test suite checks the same property without a browser
(tests/test_demo.py: every <img src> resolves to a file that decodes as an image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", type=Path)
    p.add_argument("--screenshot", type=Path, default=None)
    args = p.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: pip install playwright==1.49.0 && python -m playwright install chromium")
        return 2
    with sync_playwright() as pw:
        browser = pw.chromium.launch(headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(args.page.resolve().as_uri(), wait_until="load")
        page.evaluate("() => Promise.all([...document.images].map(i => i.loading === 'lazy' ? (i.loading = 'eager', "
                      "i.decode().catch(() => null)) : i.decode().catch(() => null)))")
        images = page.evaluate("() => [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        if args.screenshot:
            page.screenshot(path=str(args.screenshot), full_page=True)
        browser.close()
    broken = [src for src, complete, width in images if not complete or width == 0]
    print(f"{len(images)} images, {len(broken)} broken" + (f": {broken}" if broken else ""))
    return 1 if broken or not images else 0


if __name__ == "__main__":
    sys.exit(main())
