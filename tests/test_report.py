"""search/report.py: a self-contained page, checked statically and in headless Chromium.

"No network request" is checked two ways: statically (no http(s)/protocol-relative URL in any src, href, url() or
@import, no <script>, <link> or <iframe> at all) and dynamically: Chromium loads the page from disk with a NetLog
(--log-net-log) and every URL request whose network isolation key is the page's (file://) site is a request the page
made; there must be none. Chromium's own background requests (update checks, network time) carry no such key, so
they do not count, and a proxy on a closed local port makes sure nothing leaves the machine anyway. A positive
control page with one external <img> proves the detector sees page requests.
"""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from search.board.paths import LEGACY_LEADERBOARD, OPTUNA_DB, leaderboard_path, optuna_url
from tiny_search import ENSEMBLE, SEARCH

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=5000"]
# Runs after load: counts images and marks those that did not decode (naturalWidth 0) on <body>.
IMAGE_CHECK = ("<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
               "document.body.dataset.images=imgs.length;"
               "document.body.dataset.broken=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;});</script>")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at "
                                    "/usr/bin/chromium (apt-get install -y chromium); headless render check skipped")


@pytest.fixture(scope="module")
def report(tiny_search, evaluated, tmp_path_factory) -> Path:
    from search.reporting import report as report_cli

    out = tmp_path_factory.mktemp("report") / "report.html"
    assert report_cli.main(["--leaderboard", str(tiny_search["leaderboard"]), "--search", SEARCH,
                            "--out", str(out)]) == 0
    return out


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_report_has_every_section_and_the_generated_banner(report, tiny_search):
    page = report.read_text()
    assert "GENERATED DATA — not C-NMC results" in page
    for heading in ("Leaderboard", "Best score by family", "Optuna", "Learning curves", "Held-out test patients",
                    "most wrong", "The patient's answer", "Calibration of the winner"):
        assert heading in page, heading
    for trial_id in ("tiny_00000", "tiny_00001"):
        assert trial_id in page
    assert "Parameter importances unavailable" not in page and "need at least 2" not in page
    # 8 figures: family bars, optimisation history, importances, learning curves, ROC+confusion, per-patient, grid,
    # the winner's reliability diagram
    assert len(embedded_images(page)) == 8
    assert "TRANSDUCTIVE" not in page  # evaluated without --patient-correction


def test_every_embedded_image_is_a_valid_png(report):
    from PIL import Image

    images = embedded_images(report.read_text())
    assert images
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 50 and image.size[1] > 50


def test_page_references_nothing_outside_itself(report):
    page = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|ftp:)""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:|//)", page, re.I)
    assert not re.search(r"@import|<script|<link|<iframe|<object|<embed", page, re.I)


def test_fewer_than_two_completed_trials_gives_a_note_not_a_crash(tiny_search, tmp_path):
    import optuna

    from search.reporting.sections import optuna_section

    storage = optuna_url(tmp_path)
    study = optuna.create_study(study_name="one", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, value=0.5, distributions={
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}))
    section = optuna_section(storage, "one")
    assert "need at least 2 completed trials" in section and section.count("<img") == 1


def _chromium(page: Path, workdir: Path) -> tuple[str, list[str]]:
    """(DOM after load, URLs the page itself requested) from one headless Chromium run."""
    net_log = workdir / "netlog.json"
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}",
               f"--log-net-log={net_log}", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads(net_log.read_text())
    types = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    page_requests = []
    for event in log["events"]:
        params = event.get("params") or {}
        if types.get(event["type"]) == "URL_REQUEST_START_JOB" and "file://" in str(params.get(
                "network_isolation_key", "")) and not str(params.get("url", "")).startswith(("file:", "data:")):
            page_requests.append(params["url"])
    return done.stdout, page_requests


def _with_image_check(report: Path, target: Path) -> Path:
    target.write_text(report.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    return target


@needs_chromium
def test_report_renders_in_headless_chromium_without_network(report, tmp_path):
    # the detector itself: a page with one external image must show one page request and one broken image
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    dom, requests = _chromium(_with_image_check(control, tmp_path / "control_checked.html"), tmp_path / "c")
    assert requests == ["http://example.invalid/x.png"]
    assert 'data-broken="1"' in dom

    page = _with_image_check(report, tmp_path / "report_checked.html")
    dom, requests = _chromium(page, tmp_path / "r")
    assert requests == []
    count = len(embedded_images(report.read_text()))
    assert f'data-images="{count}"' in dom and 'data-broken="0"' in dom, dom[:300]
    assert "GENERATED DATA" in dom


def test_learning_curves_come_from_the_whole_history(tiny_search):
    from search.board.leaderboard import read
    from search.reporting.sections import trial_history

    for _, row in read(tiny_search["leaderboard"]).iterrows():
        history = trial_history(row["checkpoint"])
        assert [h["epoch"] for h in history] == list(range(1, row["epochs_run"] + 1))
        assert [h["weighted_f1"] for h in history] == [h["weighted_f1"] for h in tiny_search["histories"][
            row["trial_id"]]]


def test_report_before_evaluation_says_so(tiny_search, tmp_path):
    from search.reporting import report as report_cli

    out = tmp_path / "report.html"
    assert report_cli.main(["--leaderboard", str(tiny_search["leaderboard"]), "--test-metrics",
                            str(tmp_path / "none.parquet"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Not evaluated yet: run python search/evaluate.py --search tiny" in page
    assert len(embedded_images(page)) == 4  # family bars, optimisation history, importances, learning curves


def test_report_shows_the_ensemble_beside_the_winner(report, evaluated):
    page = report.read_text()
    versus = page[page.index("Ensembles beside the winner"):]
    table = evaluated["metrics"]
    winner = table[(table["val_rank"] == 1) & ~table["retrained"] & table["tta"]].iloc[0]
    ensemble = table[(table["trial_id"] == ENSEMBLE) & table["tta"]].iloc[0]
    assert "validation winner" in versus and ENSEMBLE in versus
    for value in (winner["weighted_f1"], ensemble["weighted_f1"]):  # both scores, as table_html formats them
        assert f"{value:.4g}" in versus
    for member in json.loads(ensemble["members"]):
        assert member in versus


def test_a_corrupt_test_metrics_file_is_one_line_and_exit_2(tiny_search, tmp_path, capsys):
    from search.reporting import report as report_cli

    metrics = tmp_path / "test_metrics.parquet"
    metrics.write_bytes(b"PAR1 truncated")
    assert report_cli.main(["--leaderboard", str(tiny_search["leaderboard"]), "--test-metrics", str(metrics),
                            "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("report: error: cannot read ") and str(metrics) in err and "\n" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_corrupt_leaderboard_is_one_line_and_exit_2(tmp_path, capsys):
    from search.reporting import report as report_cli

    board = tmp_path / LEGACY_LEADERBOARD
    board.write_text("not parquet\n")
    assert report_cli.main(["--leaderboard", str(board), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"report: error: cannot read leaderboard {board}") and "\n" not in err


def test_an_optuna_db_that_is_not_sqlite_is_one_line_and_exit_2(tiny_search, tmp_path, capsys):
    """The same pre-flight as search/run.py (search/board/checks.py check_cli_inputs): it was an 82-line SQLAlchemy traceback."""
    import shutil

    from search.reporting.report import main

    results = tmp_path / "results"
    results.mkdir()
    shutil.copytree(tiny_search["leaderboard"], leaderboard_path(results))
    (results / OPTUNA_DB).write_text("my notes, not a database\n")
    code = main(["--leaderboard", str(leaderboard_path(results)), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"report: error: {results / OPTUNA_DB} is not a usable SQLite database"), err
    assert not (tmp_path / "r.html").exists()
