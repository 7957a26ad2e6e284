"""Screenshots of TensorBoard's tabs for a run, as a user sees them: a real server, a headless Chromium.

    apt-get install chromium && .venv/bin/pip install -e ".[screenshots]"   # once; no browser download needed
    .venv/bin/python -m hooktrain.screenshots outputs/<date>/<time>/tensorboard --out docs

Writes ``dashboard-<tab>.png`` for the Time Series, Scalars, Images, Histograms, Custom Scalars and HParams tabs.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TABS = {"time-series": "timeseries", "scalars": "scalars", "images": "images", "histograms": "histograms",
        "custom-scalars": "custom_scalars", "hparams": "hparams"}  # file name -> the tab's address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tensorboard(logdir: Path, port: int) -> subprocess.Popen:
    """``tensorboard --logdir`` on ``port``, every image kept; returns once its HTTP API answers (the tests use it too)."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1",
               "--samples_per_plugin", "images=100"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"tensorboard did not answer on port {port} within 120 s")


def take(logdir: Path, out: Path, chromium: str, width: int = 1400, height: int = 1000) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_tensorboard(logdir, port)
    written = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": width, "height": height})
            for name, tab in TABS.items():
                page.goto(f"http://127.0.0.1:{port}/#{tab}", wait_until="networkidle")
                page.wait_for_timeout(4000)  # charts draw after the data arrives
                path = out / f"dashboard-{name}.png"
                page.screenshot(path=str(path))
                written.append(path)
            browser.close()
    finally:
        server.kill()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, help="a run's tensorboard folder, or a folder of runs")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("no chromium found: apt-get install chromium, or pass --chromium /path/to/chrome")
    for path in take(args.logdir, args.out, args.chromium):
        print(path)


if __name__ == "__main__":
    main()
