"""Screenshots of the MLflow UI after a small real sweep, for the README (docs/*.png).

Starts a throwaway `mlflow server`, runs a small local sweep on synthetic data with
driver.py (3 varying parameters, so every plot is drawn), then drives the system's headless
Chromium (Debian: `apt-get install chromium`; Python: the `docs` extra, Playwright, which
downloads no browser) to capture:

  docs/ui-experiment-runs.png   the experiment in the model-training view, the sweep's
                                parent run expanded to its nested trials
  docs/ui-learning-curves.png   the chart view: the trials' learning curves
  docs/ui-sweep-run.png         the parent run's page: its description (the sweep's note)

and copies the driver's own plots (the parent run's plots/ artifacts) next to them.

    .venv/bin/python scripts/screenshots.py            # about 5 minutes on 2 cores
    .venv/bin/python scripts/screenshots.py --tracking-uri http://127.0.0.1:5000 \\
        --experiment celeb-smile-demo                   # reuse a server with a finished sweep
"""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

from mlflow import MlflowClient  # noqa: E402

from celeb_smile import local_server  # noqa: E402
from celeb_smile.constants import SWEEP_ID_TAG  # noqa: E402
from celeb_smile.sweep import report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SWEEP_ARGS = ["--grid", "convolutions=1,2", "--grid", "learning_rate=0.001,0.003",
              "--grid", "randomize_images=true,false", "--param", "epochs=4",
              "--param", "training_samples=256", "--param", "validation_samples=64",
              "--param", "batch_size=32", "--max-parallel", "2"]
MAX_BYTES = 300_000
VIEWPORT = {"width": 1500, "height": 720}
RUN_PAGE_VIEWPORT = {"width": 1500, "height": 1300}
SETTLE_MS = 5000  # the UI loads runs and charts asynchronously


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "docs")
    parser.add_argument("--tracking-uri", help="an existing server (default: start one)")
    parser.add_argument("--experiment", default="celeb-smile-demo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        with _server(args.tracking_uri, Path(tmp)) as uri:
            client = MlflowClient(uri)
            experiment_id, parent = _sweep(client, uri, args.experiment, Path(tmp))
            _copy_plots(client, parent, args.out, Path(tmp))
            _capture(uri, experiment_id, parent, args.out)
    return _check_sizes(args.out)


@contextlib.contextmanager
def _server(tracking_uri, tmp: Path):
    if tracking_uri:
        yield tracking_uri
        return
    with local_server.mlflow_server(f"sqlite:///{tmp}/mlflow.db", tmp) as uri:
        yield uri


def _sweep(client, uri: str, experiment: str, tmp: Path) -> tuple[str, str]:
    """(experiment id, parent run id) of the experiment's sweep; run one if there is none."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    report.prepare_experiment(client, experiment_id)
    if not _parents(client, experiment_id):
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
        command = [sys.executable, str(PROJECT_DIR / "driver.py"), "--experiment", experiment,
                   *SWEEP_ARGS]
        print("running:", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=tmp, env=env, check=True)
    return experiment_id, _parents(client, experiment_id)[0].info.run_id


def _parents(client, experiment_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_ID_TAG}` != ''",
                              order_by=["attributes.start_time DESC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _copy_plots(client, parent: str, out: Path, tmp: Path) -> None:
    local = Path(client.download_artifacts(parent, report.PLOTS_DIR, str(tmp)))
    for png in sorted(local.glob("*.png")):
        shutil.copyfile(png, out / png.name)
        print("plot:", out / png.name)


def _capture(uri: str, experiment_id: str, parent: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    # MLflow 3.17's UI picks its view from a global switch (this URL parameter, else the
    # browser's last choice, GenAI by default); the experiment's kind tag is set as well.
    view = "workflowType=machine_learning"
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        page = browser.new_page()
        page.goto(f"{uri}/#/experiments/{experiment_id}/runs?{view}")
        page.wait_for_timeout(SETTLE_MS)
        _close_assistant(page)
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        page.wait_for_timeout(1500)
        _shoot(page, out / "ui-experiment-runs.png")

        page.goto(f"{uri}/#/experiments/{experiment_id}/runs?{view}&compareRunsMode=CHART")
        page.wait_for_timeout(SETTLE_MS)
        page.get_by_placeholder("Search metric charts").fill("val_accuracy")
        page.wait_for_timeout(2000)
        _shoot(page, out / "ui-learning-curves.png")

        page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{parent}?{view}")
        page.wait_for_timeout(SETTLE_MS)
        _close_assistant(page)
        page.set_viewport_size(RUN_PAGE_VIEWPORT)  # the app scrolls inside itself
        with contextlib.suppress(Exception):
            page.get_by_text("Show more").first.click(timeout=3000)
        page.wait_for_timeout(2000)
        _shoot(page, out / "ui-sweep-run.png")
        browser.close()


def _close_assistant(page) -> None:
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close").first.click(timeout=3000)
        page.wait_for_timeout(500)


def _shoot(page, path: Path) -> None:
    page.screenshot(path=str(path))
    print("screenshot:", path)


def _check_sizes(out: Path) -> int:
    large = [p for p in out.glob("*.png") if p.stat().st_size > MAX_BYTES]
    for path in large:
        print(f"too large for the repository: {path} ({path.stat().st_size} bytes)")
    return 1 if large else 0


if __name__ == "__main__":
    sys.exit(main())
