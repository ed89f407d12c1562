"""A page as a person sees it: a screenshot from headless Chromium (Debian's package), as RGB pixels in [0, 1].
Tests that look at a page skip where no Chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, shot: Path, size: tuple[int, int] = (1200, 1600)) -> np.ndarray:
    """The page rendered in a window of ``size`` (width, height) pixels, its pixels ``(height, width, 3)``."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium to look at the page with")
    subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            f"--window-size={size[0]},{size[1]}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(shot))[..., :3]


def colour_pixels(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: float = 0.08) -> int:
    """How many pixels are within ``tolerance`` (per channel, in [0, 1]) of the colour ``rgb`` (0-255)."""
    target = np.asarray(rgb, dtype=np.float64) / 255.0
    return int(np.count_nonzero(np.all(np.abs(pixels - target) <= tolerance, axis=-1)))
