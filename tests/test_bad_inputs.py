"""Bad input at the CLI: `search.cli.run.main(argv)` must exit non-zero with ONE line naming the culprit, and start nothing.

Most rows are refused before Ray starts (search.cli.preflight.check_before_launch), so these tests are fast. The rows whose
check needs Ray (an image that does not decode, a GPU request on a CPU-only cluster, the object store's size, a failure
after Ray is up) are at the end, marked slow, and share one local Ray; a local Ray that cannot start runs as its own
`python -m search.run`. Data-layer refusals of the same inputs are tested in tests/test_data_layout.py and
tests/test_data_decode.py; RELIABILITY.md lists which test covers which row.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cnmc_trees import LABELS_CSV, kaggle_tree, write_image
from processes import kill_group
from leukmodels.data import discover
from search.board.paths import OPTUNA_DB, leaderboard_path, settings_path
from search.cli.run import main


def _refused(argv: list[str], tmp_path: Path, capsys, *, results: Path | None = None) -> str:
    """Run the CLI; assert exit 2, one stderr line, nothing started; return that line."""
    results = results or tmp_path / "results"
    code = main(["--family", "resnet", "--image-sizes", "24", "--results", str(results),
                 "--storage", str(tmp_path / "ray"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (decoding draws a progress bar)
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    assert not (tmp_path / "ray").exists()  # no Tune experiment, no Train run
    return errors[0]


def _tree(tmp_path: Path) -> Path:
    return kaggle_tree(tmp_path / "data")


# -- data ---------------------------------------------------------------------------------------------------------
def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _refused(["--data", str(tmp_path / "empty")], tmp_path, capsys)
    assert f"no C-NMC images under {tmp_path / 'empty'}" in err


def test_class_folders_without_images(tmp_path, capsys):
    top = _tree(tmp_path)
    for image in (top / "training_data").glob("fold_*/hem/*.bmp"):
        image.unlink()  # every hem/ folder is there but empty
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert f"--data {top}" in err and "HEM patients, found 0" in err


def test_duplicate_image_names(tmp_path, capsys):
    top = _tree(tmp_path)
    first = next((top / "training_data" / "fold_0" / "all").glob("*.bmp"))
    shutil.copy(first, top / "training_data" / "fold_1" / "all" / first.name)
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert f"duplicate image name {first.stem}" in err


def test_labels_csv_with_wrong_columns(tmp_path, capsys):
    top = _tree(tmp_path)
    csv = top / "validation_data" / LABELS_CSV
    pd.read_csv(csv, dtype=str).rename(columns={"labels": "label"}).to_csv(csv, index=False)
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert f"labels CSV {csv} has columns" in err


def test_labels_csv_naming_an_unknown_file(tmp_path, capsys):
    top = _tree(tmp_path)
    csv = top / "validation_data" / LABELS_CSV
    frame = pd.read_csv(csv, dtype=str)
    extra = frame.iloc[[0]].assign(new_names="9999.bmp")  # a row for a file that is not there
    pd.concat([frame, extra]).to_csv(csv, index=False)
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert "name a file missing from" in err and "9999" in err


def test_patient_id_contradicting_its_class_folder(tmp_path, capsys):
    top = _tree(tmp_path)
    bad = write_image(top / "training_data" / "fold_0" / "all" / "UID_H77_1_1_all.bmp")  # a normal patient's id
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert "name a patient whose id contradicts their class folder" in err and err.endswith(str(bad))


def test_sizes_that_do_not_fit_the_disk_or_memory_are_refused_before_decoding(tmp_path, capsys, monkeypatch):
    """32 train+val images at 200,000 px are 32 x 3 x 200,000^2 B = 3.84 TB: more than this disk or memory holds."""
    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / "cache"))
    top = _tree(tmp_path)  # frames of 16 px
    code = main(["--family", "resnet", "--data", str(top), "--image-sizes", "200000", "--results",
                 str(tmp_path / "results"), "--storage", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and [line for line in err if line.startswith("error:")] == err[-1:]
    assert err[-1].startswith("error: --image-sizes 200000: ") and "3,840.0 GB" in err[-1]
    assert "GB free in" in err[-1] or "of memory available" in err[-1]
    assert "warning: --image-sizes 200000 is larger than the frames themselves (16 px)" in "\n".join(err)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray").exists()  # nothing decoded, Ray not started


def test_stray_non_image_files_are_ignored(tmp_path):
    """Handled: only *.bmp files are images; notes, thumbnails and .DS_Store files beside them are skipped."""
    top = _tree(tmp_path)
    before = len(discover(top))
    (top / "training_data" / "fold_0" / "all" / "notes.txt").write_text("seen by a human")
    (top / "training_data" / "fold_0" / "hem" / ".DS_Store").write_bytes(b"\0\1")
    assert len(discover(top)) == before


def test_oversized_frames_are_resized_like_the_rest(tmp_path):
    """Handled: a 600 x 600 frame among 450 x 450 ones (the real final-test quirk) decodes to the same S x S."""
    from leukmodels.data.decode import load_image

    small, large = write_image(tmp_path / "a.bmp", 450, seed=1), write_image(tmp_path / "b.bmp", 600, seed=1)
    a, b = load_image(str(small), 24), load_image(str(large), 24)
    assert a.shape == b.shape == (3, 24, 24) and b.dtype.name == "uint8"
    assert abs(int(a.astype(int).sum()) - int(b.astype(int).sum())) < 0.1 * a.sum()  # same cell, same share


# -- flags ----------------------------------------------------------------------------------------------------------
def test_image_size_too_small_for_every_config_of_the_family(tmp_path, capsys):
    err = _refused(["--family", "torchvision", "--image-sizes", "24"], tmp_path, capsys)
    assert "--image-sizes 24" in err and "torchvision" in err


def test_cluster_address_that_does_not_answer_fails_fast(tmp_path, capsys):
    err = _refused(["--address", "127.0.0.1:1"], tmp_path, capsys)  # port 1: nothing listens, refused at once
    assert "--address 127.0.0.1:1" in err and "no Ray answers" in err


def test_results_folder_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    err = _refused([], tmp_path, capsys, results=tmp_path / "a-file" / "results")
    assert f"cannot write leaderboard {leaderboard_path(tmp_path / 'a-file' / 'results')}" in err


def test_storage_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code = main(["--family", "resnet", "--results", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "a-file" / "ray")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--storage {tmp_path / 'a-file' / 'ray'}" in err and "not a folder" in err


@pytest.mark.parametrize("protected", ["folder", "old file", "own file"])
def test_read_only_leaderboard_is_refused_not_replaced(protected, tmp_path, capsys):
    """chmod a-w on the leaderboard is the user's protection: the dataset folder, the old single file (a write would
    move it into the folder) or the search's own file. Refused before training, naming it, and it keeps its bytes
    and its mode (it was replaced by a writable one). Holds under root too: the mode bits are read."""
    from board_rows import make_row
    from search.board.files import board_files
    from search.board.leaderboard import append_rows
    from search.cli.preflight import check_not_read_only

    board = leaderboard_path(tmp_path / "results")
    files = board_files(board)
    append_rows(board, [make_row(search="B3", trial_id="t1")])
    if protected == "old file":
        pq.write_table(pq.read_table(files.search_file("B3")), files.legacy)  # stands in for an old file
    target = {"folder": files.folder, "old file": files.legacy, "own file": files.search_file("B3")}[protected]
    mode = 0o555 if target.is_dir() else 0o444
    target.chmod(mode)
    before = None if target.is_dir() else target.read_bytes()
    code = main(["--family", "baseline", "--data", str(tmp_path), "--name", "B3", "--results", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {target} is read-only ("), err
    assert target.stat().st_mode & 0o777 == mode and (before is None or target.read_bytes() == before)
    target.chmod(0o755 if target.is_dir() else 0o644)
    check_not_read_only(board, "B3")  # writable again: no objection


@pytest.mark.parametrize("name, said", [("x" * 300, "300 bytes as a file name (300 characters)"),
                                         ("ü" * 130, "260 bytes as a file name (130 characters)")])
def test_name_too_long_for_the_file_system(name, said, tmp_path, capsys):
    """The limit counts bytes (a non-ASCII character takes several), and the line says so (it said characters)."""
    err = _refused(["--name", name], tmp_path, capsys)
    assert err.startswith(f"error: --name takes {said}; at most 250 bytes fit"), err
    assert not (tmp_path / "results").exists()  # refused before anything was written


@pytest.mark.parametrize("content", [b"these are my notes, not a database\n", b"SQLite format 3\x00" + bytes(200)],
                         ids=["text", "damaged"])
def test_optuna_db_that_is_not_sqlite(content, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "results" / OPTUNA_DB
    db.parent.mkdir()
    db.write_bytes(content)
    err = _refused([], tmp_path, capsys)
    assert err.startswith(f"error: {db} is not a usable SQLite database (")
    assert db.read_bytes() == content and not (tmp_path / "cache").exists()  # left as it was, nothing decoded


@pytest.mark.parametrize("where", ["a-file", "a-file/cache"])
def test_decode_cache_folder_that_is_a_file(where, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / where))
    err = _refused([], tmp_path, capsys)
    assert err == (f"error: LEUKTUNE_CACHE={tmp_path / where}: cannot write the decode cache there "
                   f"({tmp_path / 'a-file'} is not a folder)")


# -- rows whose check needs Ray (one shared local Ray) -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
def test_image_that_does_not_decode_names_the_file(damage, ray_2cpu, tmp_path, capsys):
    top = _tree(tmp_path)
    victim = next((top / "training_data" / "fold_1" / "hem").glob("*.bmp"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not a bitmap")
    err = _refused(["--data", str(top)], tmp_path, capsys)
    assert f"cannot decode image {victim}" in err


@pytest.mark.slow
def test_more_gpus_per_worker_than_any_node_has(ray_2cpu, tmp_path, capsys):
    err = _refused(["--gpus-per-worker", "1"], tmp_path, capsys)
    assert "--gpus-per-worker 1" in err and "largest node has none" in err


@pytest.mark.slow
def test_image_size_beyond_the_object_store_is_refused_before_decoding(ray_2cpu, tmp_path, capsys, monkeypatch):
    """The object store's size is known once Ray is up: pick the size whose decoded train+val set just exceeds the
    smallest node's store (skipped where that set would not fit this machine's memory or disk anyway)."""
    from search.tuning.plan import cluster_nodes
    from search.cli.sizes import available_memory

    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / "cache"))
    top = _tree(tmp_path)
    images = int(discover(top)["source"].str.startswith("fold_").sum())  # train + val: the prelim set is the test
    store = min(int(node["object_store_memory"]) for node in cluster_nodes())
    size = math.isqrt(store // (3 * images)) + 1
    need = images * 3 * size * size
    if need > min(available_memory() or 0, shutil.disk_usage(tmp_path).free):
        pytest.skip(f"{need} B would not fit this machine before Ray: the memory or disk check refuses it first")
    err = _refused(["--data", str(top), "--image-sizes", str(size)], tmp_path, capsys)
    assert err.startswith(f"error: --image-sizes {size}: {images} train+val images at {size} px take ")
    assert "more than Ray's object store holds" in err
    assert not (tmp_path / "cache").exists()  # refused before decoding


@pytest.mark.slow
def test_search_that_fails_before_launch_leaves_no_settings_and_can_run_again(ray_2cpu, tmp_path, capsys):
    """A failure once Ray is up but before Tune built its experiment (here: an image that does not decode) must not
    leave results/searches/NAME.json behind: the same command would be refused ("use --resume") and --resume would
    find no Tune experiment."""
    top = _tree(tmp_path)
    victim = next((top / "training_data" / "fold_2" / "all").glob("*.bmp"))
    victim.write_bytes(b"this is not a bitmap")
    for _ in range(2):  # the same command twice: refused for the image both times, never for the name
        err = _refused(["--data", str(top), "--name", "again"], tmp_path, capsys)
        assert f"cannot decode image {victim}" in err
        assert not settings_path(tmp_path / "results", "again").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_ray_that_cannot_start_is_one_line_and_exit_2(tmp_path):
    """A real start-up failure, in a real `python -m search.run`: the port the local Ray's GCS must use (Ray's own
    RAY_GCS_SERVER_PORT) is taken. Ray's own connect waits (its RAY_ settings) are shortened so the test takes
    seconds; with Ray's defaults the same failure takes about 40 s, and the CLI adds no wait of its own."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "RAY_GCS_SERVER_PORT": str(taken.getsockname()[1]), "RAY_py_gcs_connect_timeout_s": "3",
               "RAY_gcs_rpc_server_connect_timeout_s": "1"}
        search = subprocess.Popen([sys.executable, "-m", "search.run", "--family", "resnet", "--image-sizes", "24",
                                   "--results", str(tmp_path / "results"), "--storage", str(tmp_path / "ray"),
                                   "--name", "no-ray"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = search.communicate(timeout=240)
        finally:
            kill_group(search)  # whatever Ray processes the failed start left
    lines = err.strip().splitlines()
    assert search.returncode == 2, err[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err[-3000:]
    assert lines[-1].startswith("error: the local Ray did not start: Failed to start GCS (port ")
    assert "`pgrep -u \"$USER\" -af gcs_server` lists yours" in lines[-1] and "ray stop" not in lines[-1]
    assert not settings_path(tmp_path / "results", "no-ray").exists() and not (tmp_path / "ray").exists()
