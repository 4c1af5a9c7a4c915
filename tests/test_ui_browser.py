"""What a person sees in the MLflow UI after a real search, checked in a real browser.

A real ``mlflow server`` (sqlite store, artifacts proxied to a temp folder, loopback, its own
process group, stopped by its own handle) receives a small trial-parallel search with
registration; headless Chromium (Debian's, driven by Playwright) then opens the pages a
reviewer opens and waits for what must be on them: the parent run and its trials named by
what they tried, a trial's params, the parent's plots, its system metrics, its logged models,
and the registered models with their aliases.

Screenshots of every page go to ``$KMEANS_LIFECYCLE_TEST_ARTIFACTS/ui/`` (default
``test-artifacts/ui/`` in the repository, git-ignored), for a person to look at.

Skips where Playwright or a Chromium binary is missing (``apt-get install chromium``;
``KMEANS_LIFECYCLE_CHROMIUM`` names another binary).  Playwright's own browser downloads are
not used.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from _mlflow_store import init_store
from _servers import mlflow_server as start_mlflow_server
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.search import search

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 4
#: A page of the MLflow UI can take a while on a loaded 2-core machine (it is a large SPA).
WAIT_MS = 60_000


def _chromium() -> str | None:
    wanted = os.environ.get("KMEANS_LIFECYCLE_CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _shots_dir() -> Path:
    root = os.environ.get("KMEANS_LIFECYCLE_TEST_ARTIFACTS")
    folder = (Path(root) if root else REPO / "test-artifacts") / "ui"
    shutil.rmtree(folder, ignore_errors=True)  # only this run's pictures
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def browser():
    """Headless Chromium, or a skip saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set KMEANS_LIFECYCLE_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def ui_server(tmp_path, monkeypatch):
    """A real `mlflow server` on a free loopback port; its URL is the tracking URI meanwhile."""
    # A migrated store copied in: the server does not run MLflow's migrations on start.
    with start_mlflow_server(tmp_path, init_store(tmp_path / "server.db")) as url:
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("KMEANS_QUIET", "1")
        yield url


def test_the_ui_tells_the_story(browser, ui_server, client, tmp_path):  # browser first: its skip is instant
    t0 = time.monotonic()
    cfg = load_experiment(REPO / "experiments" / "blobs.yaml", [
        "data.n_samples=1500", f"search.n_trials={N_TRIALS}", "metrics.silhouette_sample=500",
        f"search.storage=sqlite:///{tmp_path / 'optuna.db'}", "tracking.experiment=ui-blobs",
    ])
    out = search(cfg, client=client, register=True)
    assert out.registered is not None
    c = MlflowClient(ui_server)
    exp = c.get_experiment_by_name(out.experiment).experiment_id
    kids = c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{out.parent_run_id}'")
    assert len(kids) == N_TRIALS
    names = sorted(k.info.run_name for k in kids)
    shots = _shots_dir()
    searched_s = time.monotonic() - t0

    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    # What a returning user's browser remembers: the "Model training" view (MLflow 3 opens on
    # its GenAI view) and the assistant panel closed (it hides half of every page).
    context.add_init_script("""
        localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
        localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
        localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
    """)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)

    def see(text: str | re.Pattern[str]) -> None:
        page.get_by_text(text).first.wait_for(state="visible")

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"))

    try:
        _walk(ui_server, exp, out, kids, names, page, see, shot)
    except BaseException:
        shot("failed-here")  # what the page showed when an expected text did not appear
        raise
    finally:
        context.close()
    print(f"search {searched_s:.0f} s, browser {time.monotonic() - t0 - searched_s:.0f} s; screenshots in {shots}")


def _walk(ui_server: str, exp: str, out, kids, names, page, see, shot) -> None:
    """The pages a reviewer opens, and what each must show."""
    # The experiment's runs: the parent, its trials nested under it.
    page.goto(f"{ui_server}/#/experiments/{exp}/runs")
    see(out.study_name)
    # The parent's row opens onto its trials (its first button is the expander).
    page.get_by_role("row").filter(has_text=out.study_name).first.get_by_role("button").first.click()
    for name in names:
        see(name)
    shot("01-experiment-runs")

    # The parent run: its trials by name, its logged and registered models.
    page.goto(f"{ui_server}/#/experiments/{exp}/runs/{out.parent_run_id}")
    see("Child runs")
    for name in names:  # "k=6 k-means++ #000": what each trial tried, not a cut-off study name
        see(name)
    see(re.compile(r"Logged models"))
    see("native_model")
    see("sklearn_model")
    see("Registered models")
    see(re.compile(r"blobs-kmeans"))
    shot("02-parent-overview")
    page.get_by_text(re.compile(r"^Logged models")).first.scroll_into_view_if_needed()
    shot("02b-parent-logged-models")

    # Its system metrics, with the search's own timing among them (not among the model's).
    page.goto(f"{ui_server}/#/experiments/{exp}/runs/{out.parent_run_id}/system-metrics")
    see(re.compile(r"cpu_utilization_percentage"))
    shot("03-parent-system-metrics")
    # Charts below the fold render only when scrolled to: the search box brings this one up.
    page.get_by_placeholder(re.compile("Search metric charts", re.I)).fill("trial_")
    see(re.compile(r"trial_overhead_median_s"))
    shot("03b-parent-system-metrics-search-timing")

    # Its plots: the artifact tree lists the PNG files, and one opens.
    page.goto(f"{ui_server}/#/experiments/{exp}/runs/{out.parent_run_id}/artifacts")
    see("plots")
    page.get_by_text("plots", exact=True).first.click()
    for png in ("optimization_history.png", "elbow.png", "param_importance.png"):
        see(png)
    page.get_by_text("elbow.png", exact=True).first.click()
    page.locator("img[src*='elbow.png'], img[alt*='elbow']").first.wait_for(state="visible")
    shot("04-parent-plots")

    # One trial: its name and the params it tried.
    kid = kids[0]
    page.goto(f"{ui_server}/#/experiments/{exp}/runs/{kid.info.run_id}")
    see(kid.info.run_name)
    see("n_clusters")
    see("init")
    see(re.compile(rf"^{re.escape(kid.data.params['init'])}$"))
    shot("05-trial")

    # The experiment's logged models.
    page.goto(f"{ui_server}/#/experiments/{exp}/models")
    see("native_model")
    see("sklearn_model")
    shot("06-experiment-models")

    # The registry: both models, the native one with its aliases.
    page.goto(f"{ui_server}/#/models")
    see("blobs-kmeans-sklearn")
    shot("07-registered-models")
    page.goto(f"{ui_server}/#/models/blobs-kmeans")
    see(re.compile(r"champion"))
    see(re.compile(r"challenger"))
    shot("08-registered-model-aliases")

