"""Where the Optuna studies live (`--optuna-storage`): one function opens them for the search, its pre-flight, the
end-of-search tidy-up and the report; the URL's password never reaches a file or a log.

    url = remember(args.optuna_storage)    # the URL without its password; the password stays in this process
    storage = open_storage(url)            # an Optuna storage: study = search name

Accepted forms (the default is the SQLite file `results/optuna.db`):
- a SQLAlchemy URL: `sqlite:///results/optuna.db`, `postgresql://user:PASSWORD@host:5432/db` (install
  `psycopg[binary]`: `pip install -e '.[postgres]'`), `mysql+pymysql://...`; a team shares one database across
  searches and heads (and one `optuna-dashboard URL`).
- a journal file, `journal:///abs/path/optuna.log` or any path ending `.log`: Optuna's JournalStorage with a
  JournalFileBackend, for a shared file system (NFS) where SQLite's locking is not safe.
- a folder without a scheme: the results folder, whose `optuna.db` is meant (what older callers passed).

Passwords: the URL with its password is used only in memory. `searches/NAME.json`, Tune's saved searcher state, the
console and the log get the URL without it (`masked` shows `***` where a person reads it). `--resume` reads the
password from `--optuna-storage` given again (the same URL with its password: not a clash) or, for PostgreSQL, from
libpq's own `PGPASSWORD` or `~/.pgpass` when the URL has none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from search.board.paths import optuna_url, settings_path

JOURNAL = "journal://"
_PASSWORDS: dict[str, str] = {}  # URL without password -> password, for this process only


def _url(url: str) -> Any:
    from sqlalchemy.engine import make_url  # here: measured +0.3-0.6 s on evaluate's and report's --help

    try:
        return make_url(url)
    except Exception as error:  # noqa: BLE001 - sqlalchemy raises ArgumentError, ValueError
        raise ValueError(f"--optuna-storage {masked(url)}: not a database URL ({error})") from None


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL) or ("://" not in url and url.endswith(".log"))


def journal_path(url: str) -> Path:
    return Path(url[len(JOURNAL):] if url.startswith(JOURNAL) else url).expanduser()


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (None for any other URL, or SQLite in memory)."""
    if not url.startswith("sqlite:"):
        return None
    database = _url(url).database
    return Path(database) if database and database != ":memory:" else None


def without_password(url: str) -> str:
    if "://" not in url or is_journal(url):
        return url
    parsed = _url(url)
    return parsed._replace(password=None).render_as_string(hide_password=False) if parsed.password else url


def masked(url: str) -> str:
    """The URL as a person may read it: `postgresql://user:***@host/db`."""
    if "://" not in url or is_journal(url) or url.startswith("sqlite:"):  # a file URL holds no password
        return url
    try:
        from sqlalchemy.engine import make_url  # here: see _url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: show the scheme only, never the rest
        return url.split("://", 1)[0] + "://***"


def remember(url: str) -> str:
    """Keep the password of `url` in this process; returns the URL without it (what is saved and shown)."""
    if "://" not in url or is_journal(url):
        return url
    parsed = _url(url)
    bare = without_password(url)
    if parsed.password:
        _PASSWORDS[bare] = parsed.password
    return bare


def with_password(url: str) -> str:
    """The URL to connect with: the password remembered for it in this process, if any."""
    password = _PASSWORDS.get(url)
    return _url(url).set(password=password).render_as_string(hide_password=False) if password else url


def resolved(url: str | None, results: str) -> str:
    """--optuna-storage as a search keeps it: the default SQLite file of `results` when not given, a journal path
    made absolute, a database URL without its password (remembered in this process)."""
    if not url:
        return optuna_url(results)
    if is_journal(url):
        return f"{JOURNAL}{journal_path(url).resolve()}"
    return remember(url)


def dashboard_target(url: str) -> str:
    """What `optuna-dashboard` takes for the study: the URL (password masked), or a journal's file path."""
    return str(journal_path(url)) if is_journal(url) else masked(url)


class PasswordFreeRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose pickle (Tune saves the searcher with its study) holds the URL without the password; an
    unpickled copy takes the password this process remembers."""

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "url": without_password(self.url)}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": with_password(state["url"])})


def open_storage(url: str) -> Any:
    """The Optuna storage at `url` (see the module docstring); the SQLite file's folder is created. ValueError with
    one line naming the masked URL when it cannot be opened (no server, wrong password, no driver)."""
    if "://" not in url and not url.endswith(".log"):
        url = optuna_url(url)  # a results folder
    if is_journal(url):
        path = journal_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except OSError as error:
            raise ValueError(f"--optuna-storage {url}: cannot open the journal file ({error.strerror or error})") \
                from None
    database = sqlite_path(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    try:
        return PasswordFreeRDBStorage(with_password(url))
    except ImportError as error:
        raise ValueError(f"--optuna-storage {masked(url)}: the database driver is missing ({error}); for "
                         f"PostgreSQL: pip install 'psycopg[binary]'") from None
    except Exception as error:  # noqa: BLE001 - sqlalchemy's OperationalError and friends
        why = " ".join(str(getattr(error, "orig", None) or error).split())[:300]
        raise ValueError(f"--optuna-storage {masked(url)}: cannot open the study database ({why})") from None


def saved_url(results: str, search: str) -> str | None:
    """The --optuna-storage a search saved in results/searches/<search>.json (None when absent)."""
    path = settings_path(results, search)
    try:
        return json.loads(path.read_text()).get("optuna_storage") if path.is_file() else None
    except (OSError, ValueError):
        return None


__all__ = ["JOURNAL", "PasswordFreeRDBStorage", "dashboard_target", "is_journal", "journal_path", "masked",
           "open_storage", "remember", "resolved", "saved_url", "sqlite_path", "with_password", "without_password"]
