"""Screenshots of the report's summary, gallery and transfer sections in headless Chromium.

    python benchmarks/report_screenshots.py RESULTS_FOLDER [--width 1400] [--height 1800]

Writes RESULTS_FOLDER/report.html first when it is missing (``robust-ad-bench report``), then one PNG per
section, RESULTS_FOLDER/screenshots/<section>.png, each taken from ``report.html#only=<section>`` (the page's
script hides the rest). Needs a Chromium (chromium, chromium-browser or google-chrome) on the PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SECTIONS = ("summary", "gallery", "transfer", "localisation")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()
    out = Path(args.out)
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        print("error: no chromium, chromium-browser or google-chrome on the PATH", file=sys.stderr)
        return 2
    report = out / "report.html"
    if not report.is_file():
        subprocess.run([sys.executable, "-m", "robust_ad_bench.benchmark.cli", "report", "--out", str(out)], check=True)
    page = report.read_text()
    shots = out / "screenshots"
    shots.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        for section in SECTIONS:
            if f'<section id="{section}">' not in page:
                print(f"{section}: not in the report (nothing to show)")
                continue
            path = shots / f"{section}.png"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
                            f"--screenshot={path}", f"--window-size={args.width},{args.height}",
                            f"{report.resolve().as_uri()}#only={section}"], check=True, capture_output=True)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
