"""Render a report in a real headless browser and check the picture is not blank.

Used by ``scripts/check_report_render.py`` and the test suite: an HTML report that a browser
cannot display (broken markup, an embedded image that fails to decode, an empty body) shows
up as a blank or nearly uniform screenshot.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import ConfigurationError

__all__ = ["find_chromium", "screenshot", "ScreenshotStats", "screenshot_stats"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on ``PATH``, or ``None``."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 4000,
               browser: str | None = None, timeout: float = 90.0) -> Path:
    """Screenshot ``html`` with headless Chromium into ``png`` (no network, throw-away profile)."""
    browser = browser or find_chromium()
    if browser is None:
        raise ConfigurationError(
            f"no Chromium browser found on PATH (tried {list(_CANDIDATES)}); on Debian: "
            "apt-get install -y chromium"
        )
    html = Path(html).resolve()
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="securefed-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--screenshot={png}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if not png.exists():
        raise ConfigurationError(
            f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-800:]}"
        )
    return png


@dataclass(frozen=True)
class ScreenshotStats:
    """``ink``: fraction of pixels that differ clearly from the page background;
    ``colours``: number of distinct colours (coarsely quantised); ``blank``: the verdict."""

    width: int
    height: int
    ink: float
    colours: int

    @property
    def blank(self) -> bool:
        return self.ink < 0.01 or self.colours < 8


def screenshot_stats(png: Path) -> ScreenshotStats:
    """Measure how much of a screenshot is not background."""
    import matplotlib.image as mpimg

    img = np.asarray(mpimg.imread(str(png)))[..., :3].astype(np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    h, w = img.shape[:2]
    flat = img.reshape(-1, 3)
    quant = np.round(flat * 15).astype(np.int64)
    codes = quant[:, 0] * 256 + quant[:, 1] * 16 + quant[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    background = values[np.argmax(counts)]
    ink = float(np.mean(codes != background))
    return ScreenshotStats(width=w, height=h, ink=ink, colours=int(values.size))
