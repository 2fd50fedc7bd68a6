"""--storage as a URI, against a real S3 protocol server (moto, the `s3` fixture): checkpoint URIs, fetching them,
the search's files copied to the bucket and back, and the pre-flight that refuses a storage that cannot be used."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from board_rows import make_row
from s3_server import S3Server, free_port
from search.board import leaderboard, search_files, storage
from search.board.paths import OPTUNA_DB, leaderboard_path, optuna_url, settings_path, split_path
from search.cli.run import main


def _put(s3, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)


def test_tune_paths_become_uris_of_the_storage(s3):
    assert storage.storage_uri("s3://leuk/tune", "leuk/tune/s/run_trial_1/checkpoint_000001") == \
        "s3://leuk/tune/s/run_trial_1/checkpoint_000001"
    assert storage.storage_uri("s3://leuk/tune?region=x", "leuk/tune/s/c") == "s3://leuk/tune/s/c?region=x"
    assert storage.storage_uri("/local/ray", "/local/ray/s/c") == "/local/ray/s/c"  # a local storage: as it is
    assert storage.storage_uri("s3://leuk/tune", "s3://leuk/tune/s/c") == "s3://leuk/tune/s/c"
    assert storage.storage_uri("s3://leuk/tune", "other/place") == "other/place"  # not under the storage


def test_a_checkpoint_uri_is_checked_fetched_once_and_named_in_errors(s3, tmp_path):
    _put(s3, "fetch/t/checkpoint_000001/checkpoint.pt", b"weights")
    _put(s3, "fetch/t/checkpoint_000002/checkpoint.pt", b"later")
    uri = s3.uri("fetch/t/checkpoint_000001")
    assert storage.exists(uri, "checkpoint.pt") and not storage.exists(uri, "other.pt")
    local = Path(storage.local_copy(uri))
    assert (local / "checkpoint.pt").read_bytes() == b"weights"
    assert storage.siblings(uri) == [uri, s3.uri("fetch/t/checkpoint_000002")]
    s3.client().delete_object(Bucket=s3.bucket, Key="fetch/t/checkpoint_000001/checkpoint.pt")
    assert storage.local_copy(uri) == str(local)  # fetched once: the cache answers
    with pytest.raises(FileNotFoundError, match="s3://leuk/fetch/gone"):
        storage.local_copy(s3.uri("fetch/gone"))


def test_predict_names_a_checkpoint_uri_that_holds_no_checkpoint(s3, capsys):
    _put(s3, "bad/checkpoint_000001/checkpoint.pt", b"not a checkpoint")
    from search.evaluation import predict

    assert predict.main(["--checkpoint", s3.uri("bad/checkpoint_000001"), "cell.bmp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a leukemia-tune checkpoint" in err[0]


def test_search_files_go_to_the_bucket_and_come_back_to_an_empty_results_folder(s3, tmp_path):
    results, fresh, where = tmp_path / "head", tmp_path / "new-head", s3.uri("files")
    leaderboard.append_rows(leaderboard_path(results),
                            [make_row("t1", search="mine"), make_row("t2", search="mine", f1=0.7),
                             make_row("x1", search="someone-else")])
    settings_path(results, "mine").parent.mkdir(parents=True)
    settings_path(results, "mine").write_text(json.dumps({"family": ["resnet"]}))
    split_path(results, "mine").parent.mkdir(parents=True)
    split_path(results, "mine").write_text("{}")
    import optuna

    optuna.create_study(study_name="mine", storage=optuna_url(results)).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    search_files.save(where, "mine", results)

    restored = search_files.restore(where, "mine", fresh)
    assert restored[0] == "2 leaderboard row(s)"  # only this search's rows
    rows = leaderboard.read(leaderboard_path(fresh))
    assert sorted(rows["trial_id"]) == ["t1", "t2"] and set(rows["search"]) == {"mine"}
    assert json.loads(settings_path(fresh, "mine").read_text()) == {"family": ["resnet"]}
    assert split_path(fresh, "mine").read_text() == "{}"
    study = optuna.load_study(study_name="mine", storage=optuna_url(fresh))
    assert [t.value for t in study.trials] == [0.5]
    assert search_files.restore(where, "mine", fresh)[0] == "2 leaderboard row(s)"  # again: replaced, not doubled
    assert len(leaderboard.read(leaderboard_path(fresh))) == 2


def test_leaderboard_reads_a_search_from_the_bucket_alone(s3, tmp_path, capsys):
    head = tmp_path / "head"
    leaderboard.append_rows(leaderboard_path(head), [make_row("t9", search="solo")])
    search_files.save(s3.uri("solo"), "solo", head)
    board = leaderboard_path(tmp_path / "elsewhere")
    assert leaderboard.main(["--storage", s3.uri("solo"), "--search", "solo", "--path", str(board)]) == 0
    assert "t9" in capsys.readouterr().out
    assert leaderboard.main(["--storage", s3.uri("nothing"), "--search", "solo", "--path", str(board)]) == 1
    assert "no files of search 'solo' at s3://leuk/nothing/solo/search_files" in capsys.readouterr().err


@pytest.mark.parametrize("bad, why", [("s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist"),
                                       ("unreachable", "endpoint unreachable")])
def test_bad_storage_is_refused_in_one_line_before_anything_is_decoded(s3, tiny_cnmc, tmp_path, monkeypatch, capsys,
                                                                      bad, why):
    if bad == "unreachable":  # nothing listens on that port
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        bad = s3.uri("x")
    code = main(["--family", "baseline", "--data", str(tiny_cnmc), "--results", str(tmp_path / "r"), "--storage", bad,
                 "--name", "refused", "--image-sizes", "24"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --storage {bad}: cannot write there ({why})"]
    assert not settings_path(tmp_path / "r", "refused").exists()


@pytest.fixture(scope="module")
def locked_s3():
    """Its own S3 server, with an IAM user that may write and one that may only read; the test checks credentials
    inside `checking_credentials()` (the other tests' server runs in this process too and is checked meanwhile)."""
    server = S3Server.start(bucket="locked")
    server.writer = server.user("writer", ["s3:*"])
    server.reader = server.user("reader", ["s3:GetObject", "s3:ListBucket"])
    yield server
    server.close()


@pytest.mark.parametrize("who, why", [
    ("unknown key", "credentials rejected: unknown access key id"),  # AWS code InvalidAccessKeyId
    ("wrong secret", "credentials rejected: wrong secret key"),  # SignatureDoesNotMatch
    ("reader", "access denied (no write permission?)"),  # AccessDenied on the probe's write
    ("writer", None)])
def test_credentials_rejected_or_without_write_permission_are_named_in_one_line(locked_s3, tiny_cnmc, tmp_path,
                                                                                 monkeypatch, capsys, who, why):
    key, secret = {"unknown key": ("AKIAUNKNOWN000000000", "x"), "wrong secret": (locked_s3.writer[0], "wrong"),
                   "reader": locked_s3.reader, "writer": locked_s3.writer}[who]
    monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    where = locked_s3.uri("x")
    with locked_s3.checking_credentials():
        assert storage.probe(where) == why
        if why is not None:  # the search's pre-flight says the same, before anything is decoded
            code = main(["--family", "baseline", "--data", str(tiny_cnmc), "--results",
                         str(tmp_path / "r"), "--storage", where, "--name", "locked", "--image-sizes", "24"])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and err == [f"error: --storage {where}: cannot write there ({why})"]


def test_probe_writes_reads_and_deletes_a_small_object(s3):
    assert storage.probe(s3.uri("probe")) is None
    assert not [key for key in s3.keys("probe") if storage.PROBE_FILE in key]  # nothing left but a folder marker


def test_resume_on_a_new_head_says_when_the_bucket_holds_nothing(s3, tmp_path, capsys):
    code = main(["--resume", "--name", "never-ran", "--results", str(tmp_path / "r"), "--storage", s3.uri("void")])
    assert code == 2
    assert "no settings at" in capsys.readouterr().err


def test_a_searchs_background_copies_reach_the_bucket_and_the_final_copy_waits_for_them(s3, tmp_path):
    import pickle

    leaderboard.append_rows(leaderboard_path(tmp_path), [make_row("t1", search="bg")])
    copies = search_files.BackgroundCopies(s3.uri("bg-store"), "bg", tmp_path)
    copies.soon()
    copies.soon()  # the first has not started or takes the same files
    assert copies.now() is None
    assert any(key.endswith("bg/search_files/rows.parquet") for key in s3.keys("bg-store"))
    assert pickle.loads(pickle.dumps(copies)).now() is None  # Tune's pickled copy of the callback holding it
    search_files.BackgroundCopies("", "bg", tmp_path).soon()  # no --storage: nothing to copy


def test_an_endpoint_that_goes_down_is_named_when_the_files_cannot_be_copied(tmp_path):
    server = S3Server.start(bucket="down")  # its own server: this test stops it
    try:
        leaderboard.append_rows(leaderboard_path(tmp_path), [make_row("t1", search="s")])
        assert search_files.save_now(server.uri("x"), "s", tmp_path) is None
        server.stop()  # the endpoint is down from here on
        warning = search_files.save_now(server.uri("x"), "s", tmp_path)
    finally:
        server.close()
    assert warning == (f"warning: could not copy the search's files to s3://down/x/s/search_files (endpoint "
                       f"unreachable); they are in {tmp_path}")
    assert len(pd.read_parquet(leaderboard_path(tmp_path))) == 1  # the head's copy is untouched


def test_a_study_restored_older_than_tunes_state_does_not_stop_the_search(tmp_path):
    """Tune's saved searcher names a trial the study restored from the bucket lacks (asked after the study's last
    copy): its reports and its end reach the study no more, nothing raises, the other trials go on as before."""
    import pickle
    import shutil

    import optuna

    from search.tuning.spaces import SearchSpace
    from search.tuning.rows import SearchRun
    from search.tuning.strategies import make_searcher

    db, url = tmp_path / OPTUNA_DB, optuna_url(tmp_path)
    searcher = make_searcher("tpe", search="lag", run=SearchRun(), space=SearchSpace(["resnet"]),
                             metric="balanced_accuracy", mode="max", storage=optuna.storages.RDBStorage(url), seed=0,
                             num_samples=2, max_epochs=2)
    assert searcher.suggest("copied") is not None
    shutil.copy(db, tmp_path / "copy.db")  # the bucket's copy of the study
    assert searcher.suggest("lost") is not None  # asked after the copy
    saved = pickle.dumps(searcher)  # Tune's state of the searcher, saved later still
    shutil.copy(tmp_path / "copy.db", db)  # a new head: the study comes back from the bucket
    restored = pickle.loads(saved)
    report = {"balanced_accuracy": 0.6, "epoch": 1, "training_iteration": 1}
    restored.on_trial_result("lost", report)
    restored.on_trial_complete("lost", result=report)
    restored.on_trial_result("copied", report)
    restored.on_trial_complete("copied", result=report)
    assert [t.state.name for t in optuna.load_study(study_name="lag", storage=url).trials] == \
        ["COMPLETE"]


def test_a_bucket_deleted_mid_search_stops_it_with_the_resume_line(tmp_path):
    """A trial fails (or is about to be retried) and the bucket is gone: the watch records why, the stopper ends the
    search, and the closing line says what failed and how to continue; a storage that works changes nothing."""
    from search.board.settings import SearchSettings
    from search.cli.profiles import PROFILES
    from search.tuning.rows import SearchRun
    from search.tuning.storage_lost import StorageWatch, lost_line
    from search.tuning.strategies import BudgetStopper

    server = S3Server.start(bucket="short-lived")  # its own server: this test deletes its bucket
    try:
        args = SearchSettings(**PROFILES["cpu"], family=["baseline"], profile="cpu", storage=server.uri("tune"),
                              name="lost-bucket", results=str(tmp_path))
        run, deadline = SearchRun(), tmp_path / "deadline.json"
        watch, stopper = StorageWatch(args.storage, run, deadline), BudgetStopper(str(deadline))
        watch.on_trial_recover(0, [], None)  # the bucket is there: a trial's own failure, the search goes on
        assert run.storage_lost is None and not stopper.stop_all() and lost_line(args, run) is None
        for key in server.keys():  # the probe's folder marker: a bucket must be empty to be deleted
            server.client().delete_object(Bucket="short-lived", Key=key)
        server.client().delete_bucket(Bucket="short-lived")
        watch.on_trial_error(0, [], None)
    finally:
        server.close()
    assert run.storage_lost == "bucket 'short-lived' does not exist"
    assert BudgetStopper(str(deadline)).stop_all()  # what Tune's stopper reads (a fresh one: it rereads each second)
    assert not run.budget_spent()  # the driver's own deadline stays: a trial cut short is --resume's, not time_budget
    assert lost_line(args, run) == (
        f"--storage s3://short-lived/tune stopped working during the search (bucket 'short-lived' does not exist): "
        f"the trials that needed it failed (their rows say why); every row is in {leaderboard_path(tmp_path)}. Once "
        f"it works again, continue with: python search/run.py --resume --name lost-bucket --results {tmp_path} "
        f"--storage s3://short-lived/tune")
