#!/usr/bin/env python
"""Render an audit report in headless Chromium and fail if the screenshot is blank.

    python scripts/check_report_render.py runs/audit-default/report.html [--png out.png]

Exit status 0: rendered with content; 1: blank; 2: no browser or no screenshot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.render_check import screenshot, screenshot_stats
from securefed.errors import SecurefedError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--png", type=Path, help="where to keep the screenshot")
    args = parser.parse_args(argv)
    png = args.png or args.html.with_name(args.html.stem + "-screenshot.png")
    try:
        screenshot(args.html, png)
    except SecurefedError as exc:
        print(f"check_report_render: {exc}", file=sys.stderr)
        return 2
    stats = screenshot_stats(png)
    print(f"{png}: {stats.width}x{stats.height}, ink {stats.ink:.1%}, {stats.colours} colours")
    if stats.blank:
        print("the report rendered blank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
