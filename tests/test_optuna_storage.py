"""--optuna-storage: the URL forms, the password kept out of every file and line, and real searches whose study lives
in a real PostgreSQL server (started here; skipped with the reason where it cannot be)."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from postgres_server import PASSWORD, postgres_server, why_not
from search.board import study_storage
from search.cli.flags import parse_args
from search.board.paths import OPTUNA_DB, optuna_url, settings_path
from search.cli.run import main
from search.board.settings import save_settings
from search.cli.run import resolve_settings, resumed_flags
from search.board.study_storage import masked, open_storage, remember, resolved


@pytest.fixture(autouse=True)
def forget_passwords(monkeypatch):
    monkeypatch.setattr(study_storage, "_PASSWORDS", {})  # each test starts as a fresh process


def test_urls_are_kept_without_their_password_and_shown_masked(tmp_path):
    url = "postgresql://ann:pa%40ss@db.example:5432/studies"
    assert resolved(None, str(tmp_path)) == optuna_url(tmp_path)
    assert resolved(url, str(tmp_path)) == "postgresql://ann@db.example:5432/studies"
    assert study_storage.with_password("postgresql://ann@db.example:5432/studies") == url  # remembered in memory
    assert masked(url) == "postgresql://ann:***@db.example:5432/studies"
    assert resolved("shared/optuna.log", str(tmp_path)).startswith("journal:///")
    assert resolved("journal:///nfs/optuna.log", str(tmp_path)) == "journal:///nfs/optuna.log"
    with pytest.raises(ValueError, match="--optuna-storage nonsense://"):
        open_storage("nonsense://x")


def test_a_journal_file_holds_studies_and_the_flag_is_saved_for_resume(tmp_path):
    journal = tmp_path / "nfs" / "optuna.log"
    storage = open_storage(f"journal://{journal}")
    optuna.create_study(study_name="j1", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = open_storage(str(journal))  # a path ending .log is the same journal
    assert len(optuna.load_study(study_name="j1", storage=again).trials) == 2

    args = parse_args(["--family", "baseline", "--name", "s", "--results", str(tmp_path / "r"),
                       "--optuna-storage", "postgresql://ann:topsecret@db/studies"])
    assert args.optuna_storage == "postgresql://ann@db/studies"
    saved = save_settings(resolve_settings(args, [{"CPU": 2.0}], {})[0]).read_text()
    assert json.loads(saved)["optuna_storage"] == "postgresql://ann@db/studies" and "topsecret" not in saved
    again = parse_args(["--resume", "--name", "s", "--results", str(tmp_path / "r"),
                        "--optuna-storage", "postgresql://ann:topsecret@db/studies"])
    again, _ = resumed_flags(again)  # the URL given again with its password is no clash
    assert again.optuna_storage == "postgresql://ann@db/studies"
    other = parse_args(["--resume", "--name", "s", "--results", str(tmp_path / "r"),
                        "--optuna-storage", "postgresql://ann@elsewhere/studies"])
    with pytest.raises(ValueError, match="--optuna-storage postgresql://ann@elsewhere/studies .saved"):
        resumed_flags(other)


@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
def test_a_database_that_does_not_answer_is_one_line_before_anything_starts(tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://ann:{PASSWORD}@127.0.0.1:{port}/studies"
    code = main(["--family", "baseline", "--name", "down", "--results", str(tmp_path / "r"),
                 "--storage", str(tmp_path / "ray"), "--optuna-storage", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and PASSWORD not in err
    assert err.startswith(f"error: --optuna-storage postgresql://ann@127.0.0.1:{port}/studies: cannot open")
    assert not settings_path(tmp_path / "r", "down").exists()


# -- real searches, the study in PostgreSQL ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres():
    if why_not() is not None:
        pytest.skip(why_not())
    with postgres_server() as url:
        yield url


def _search(data: Path, tmp: Path, name: str, trials: int, *extra: str) -> int:
    return main(["--family", "baseline", "--data", str(data), "--image-sizes", "24", "--max-epochs", "2",
                 "--grace-epochs", "2", "--num-samples", str(trials), "--workers-per-trial", "1",
                 "--results", str(tmp / "results"), "--storage", str(tmp / "ray"), "--name", name, *extra])


def _files_holding(folder: Path, secret: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_searches_share_a_postgresql_study_database_and_resume_reads_it(ray_2cpu, tiny_cnmc, postgres, tmp_path,
                                                                        capfd, monkeypatch):
    assert _search(tiny_cnmc, tmp_path, "pg1", 3, "--optuna-storage", postgres) == 0
    assert _search(tiny_cnmc, tmp_path, "pg2", 2, "--optuna-storage", postgres) == 0  # a second search, same db
    shown = capfd.readouterr()
    storage = open_storage(remember(postgres))
    assert {"pg1", "pg2"} <= set(optuna.get_all_study_names(storage=storage))
    for name, trials in (("pg1", 3), ("pg2", 2)):
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == trials
        assert all(t.state.is_finished() for t in study.trials) and any(t.value is not None for t in study.trials)
    assert not (tmp_path / "results" / OPTUNA_DB).exists()  # nothing went to the default SQLite file
    assert f"optuna-dashboard {remember(postgres)}" in shown.out  # the URL without its password
    secret = PASSWORD.encode()
    assert secret.decode() not in shown.out + shown.err
    assert _files_holding(tmp_path, secret) == []  # settings, logs, Tune's state and the pickled searcher

    # --resume on a "new process": the password from libpq's PGPASSWORD, the URL from the saved settings
    monkeypatch.setattr(study_storage, "_PASSWORDS", {})
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert main(["--resume", "--name", "pg1", "--results", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "ray")]) == 0
    resumed = capfd.readouterr()
    assert "could not check the Optuna study" not in resumed.out + resumed.err  # it read the study from PostgreSQL
    assert not (tmp_path / "results" / OPTUNA_DB).exists()
    assert len(optuna.load_study(study_name="pg1", storage=storage).trials) == 3  # no trial run twice
