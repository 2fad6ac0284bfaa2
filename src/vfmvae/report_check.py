"""Open a `vfmvae report` page in headless Chromium and check what a reader would see.

    python scripts/check_report_in_chromium.py runs/demo/report/index.html --screenshot page.png

Checks: every <img> decoded to a non-empty bitmap (naturalWidth > 0, lazy images forced to load), no console
errors, uncaught page errors or failed requests, and a screenshot that is not blank. Needs playwright (the
`diffusers`/`dev` extras pin it) and a Chromium: the system one (Debian/Ubuntu: `apt-get install chromium`) is
found on PATH or at $VFMVAE_CHROMIUM; playwright's own browser download (`playwright install chromium`) works too.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PageCheck", "check_page", "find_chromium"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """A Chromium executable: $VFMVAE_CHROMIUM, else the first of CHROMIUM_NAMES on PATH, else None."""
    explicit = os.environ.get("VFMVAE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    blank_screenshot: bool = False

    @property
    def ok(self) -> bool:
        return self.images > 0 and not (self.broken_images or self.console_errors or self.blank_screenshot)

    def problems(self) -> list[str]:
        out = [f"image did not decode: {src}" for src in self.broken_images]
        out += [f"console: {text}" for text in self.console_errors]
        if self.images == 0:
            out.append("the page has no images")
        if self.blank_screenshot:
            out.append("the screenshot is blank (one colour)")
        return out


def _is_blank(png: bytes) -> bool:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        low, high = zip(*img.convert("RGB").getextrema())
    return all(a == b for a, b in zip(low, high))


def check_page(
    page_path: str | Path, *, screenshot: str | Path | None = None, executable: str | None = None
) -> PageCheck:
    """Load `page_path` (a local HTML file) in headless Chromium and return what was wrong with it."""
    from playwright.sync_api import sync_playwright

    page_path = Path(page_path)
    if not page_path.is_file():
        raise FileNotFoundError(f"report page not found: {page_path}")
    executable = executable or find_chromium()
    result = PageCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(headless=True, executable_path=executable)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: result.console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: result.console_errors.append(f"uncaught: {err}"))
            page.on("requestfailed", lambda req: result.console_errors.append(f"request failed: {req.url}"))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            # lazy images below the fold load only when scrolled to: force them, then wait for every decode
            page.evaluate(
                "() => Promise.all([...document.images].map(i => { i.loading = 'eager'; "
                "return i.decode().catch(() => null); }))"
            )
            states = page.evaluate(
                "() => [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
            )
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    result.images = len(states)
    result.broken_images = [src for src, complete, width in states if not complete or width == 0]
    result.blank_screenshot = _is_blank(png)
    if screenshot is not None:
        Path(screenshot).write_bytes(png)
    return result
