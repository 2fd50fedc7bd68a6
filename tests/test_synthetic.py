"""The generated C-NMC stand-in: exact Kaggle layout and names, labels CSV, determinism, image format, cell statistics
against the measurements of real cells (leukmodels/cells.py), patient disjointness, the patient effects (skewed cells
per patient, per-patient shifts and difficulty), and the atomic, locked default_dataset."""
import csv
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukmodels import synthetic

SMALL = dict(n_all=3, n_hem=3, images_per_patient=3, n_prelim=3, n_final=2, cell_skew=0.0, difficulty=0.0)
PLAIN = dict(cell_skew=0.0, difficulty=0.0)  # every patient the same number of cells, no flipped cells
TRAIN_NAME = re.compile(r"^UID_(?P<patient>H\d+|h3|\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)\.bmp$")
NUMBERED = re.compile(r"^[1-9]\d*\.bmp$")
PRELIM = "validation_data/C-NMC_test_prelim_phase_data"
FINAL = "testing_data/C-NMC_test_final_phase_data"
LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("small"), seed=7, workers=1, **SMALL)


@pytest.fixture(scope="module")
def sample_stats(tmp_path_factory) -> dict:
    """Area and mean colour of every training cell of a modest tree (6 ALL + 6 HEM patients x 8 cells)."""
    top = synthetic.generate(tmp_path_factory.mktemp("stats"), n_all=6, n_hem=6, images_per_patient=8,
                             n_prelim=0, n_final=0, seed=3, workers=2, **PLAIN)
    stats = {cls: {"area": [], "rgb": [], "within": []} for cls in ("all", "hem")}
    for path in top.glob("training_data/fold_*/*/*.bmp"):
        pixels = np.asarray(Image.open(path))                 # H x W x 3
        foreground = pixels.max(axis=-1) > 0
        stats[path.parent.name]["area"].append(int(foreground.sum()))
        stats[path.parent.name]["rgb"].append(pixels[foreground].mean(axis=0))
        stats[path.parent.name]["within"].append(pixels[foreground].std(axis=0))
    return {cls: {k: np.array(v) for k, v in d.items()} for cls, d in stats.items()}


def read_labels(top: Path) -> list[dict]:
    with open(top / LABELS, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["Patient_ID", "new_names", "labels"]
        return list(reader)


def all_files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def test_exact_kaggle_layout_and_names(small_tree):
    assert small_tree.name == "C-NMC_Leukemia"
    assert sorted(p.name for p in small_tree.iterdir()) == [
        "GENERATED.json", "testing_data", "training_data", "validation_data"]
    assert sorted(p.name for p in (small_tree / "training_data").iterdir()) == ["fold_0", "fold_1", "fold_2"]
    train = list((small_tree / "training_data").rglob("*.bmp"))
    for fold in ("fold_0", "fold_1", "fold_2"):
        assert sorted(p.name for p in (small_tree / "training_data" / fold).iterdir()) == ["all", "hem"]
    for path in train:
        match = TRAIN_NAME.match(path.name)
        assert match, path.name
        assert match["cls"] == path.parent.name
        assert match["patient"].upper().startswith("H") == (match["cls"] == "hem"), path.name
    assert len(train) == (SMALL["n_all"] + SMALL["n_hem"]) * SMALL["images_per_patient"]
    assert sum(p.name.startswith("UID_h3_") for p in train) == 1      # the real release's lower-case quirk
    assert any(p.name.startswith("UID_H3_") for p in train)
    for folder, patients in ((PRELIM, SMALL["n_prelim"]), (FINAL, SMALL["n_final"])):
        names = sorted(p.name for p in (small_tree / folder).iterdir())
        assert all(NUMBERED.match(n) for n in names), names
        assert sorted(names, key=lambda n: int(n[:-4])) == [f"{i}.bmp" for i in range(1, len(names) + 1)]
        assert len(names) == patients * SMALL["images_per_patient"]
    every = {str(p.relative_to(small_tree)) for p in small_tree.rglob("*") if p.is_file()}
    numbered = {str(p.relative_to(small_tree)) for f in (PRELIM, FINAL) for p in (small_tree / f).iterdir()}
    assert every == {str(p.relative_to(small_tree)) for p in train} | numbered | {LABELS, "GENERATED.json"}


def test_labels_csv_matches_files(small_tree):
    rows = read_labels(small_tree)
    assert sorted(r["new_names"] for r in rows) == sorted(p.name for p in (small_tree / PRELIM).iterdir())
    for row in rows:
        assert (small_tree / PRELIM / row["new_names"]).is_file()
        match = TRAIN_NAME.match(row["Patient_ID"])
        assert match, row["Patient_ID"]
        assert row["labels"] == ("1" if match["cls"] == "all" else "0")
    assert {r["labels"] for r in rows} == {"0", "1"}                   # 3 prelim patients: 2 ALL + 1 HEM


def test_marker_labels_the_tree_as_generated(small_tree):
    marker = json.loads((small_tree / "GENERATED.json").read_text())
    assert marker["generated"] is True and marker["seed"] == 7
    assert marker["parameters"] == SMALL
    assert "NOT a C-NMC" in marker["note"]
    assert set(marker["final_test_labels"]) == {p.name for p in (small_tree / FINAL).iterdir()}


def test_patients_disjoint_across_folds_and_tests(small_tree):
    def patient(name):
        return TRAIN_NAME.match(name)["patient"].upper()
    folds = {f: {patient(p.name) for p in (small_tree / "training_data" / f).rglob("*.bmp")}
             for f in ("fold_0", "fold_1", "fold_2")}
    prelim = {patient(r["Patient_ID"]) for r in read_labels(small_tree)}
    final = set(json.loads((small_tree / "GENERATED.json").read_text())["patients"]["final"])
    sets = [*folds.values(), prelim, final]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 3 + 3 + 3 + 2
    assert all(folds.values()) and len(final) == SMALL["n_final"]


def test_24_bit_bmp_450_with_black_corners(small_tree):
    for path in list(small_tree.rglob("*.bmp"))[::4]:
        raw = path.read_bytes()
        assert raw[:2] == b"BM" and int.from_bytes(raw[28:30], "little") == 24, path
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("BMP", "RGB", (450, 450))
            pixels = np.asarray(image)
        for corner in (pixels[:25, :25], pixels[:25, -25:], pixels[-25:, :25], pixels[-25:, -25:]):
            assert not corner.any(), path
        assert pixels[225 - 20:225 + 20, 225 - 20:225 + 20].min(axis=-1).min() > 0   # the cell sits in the middle


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    sizes = dict(n_all=2, n_hem=1, images_per_patient=3, n_prelim=1, n_final=1, cell_skew=1.0, difficulty=0.3)
    one = all_files(synthetic.generate(tmp_path / "a", seed=5, workers=1, **sizes))
    two = all_files(synthetic.generate(tmp_path / "b", seed=5, workers=2, **sizes))
    other = all_files(synthetic.generate(tmp_path / "c", seed=6, workers=1, **sizes))
    assert one == two                                                   # skew and flips drawn by seed too
    assert len(one) == 5 * 3 + 2
    images = {v for k, v in one.items() if k.endswith(".bmp")}
    assert not images & {v for k, v in other.items() if k.endswith(".bmp")}   # no image shared across seeds


def test_area_per_class_matches_real_cells(sample_stats):
    all_area, hem_area = sample_stats["all"]["area"], sample_stats["hem"]["area"]
    assert 32_000 < all_area.mean() < 41_000                         # real: 36,244 published, 37,000 measured
    assert 22_500 < hem_area.mean() < 31_000                         # real: 26,544 published, 31,000 measured
    assert all_area.mean() > hem_area.mean() + 5_000                 # blasts larger ...
    assert all_area.min() < hem_area.max()                           # ... with overlapping distributions
    for area in (all_area, hem_area):
        assert 4_000 < area.std() < 12_000                           # real: spread 7,000-9,000


def test_colour_matches_real_cells(sample_stats):
    rgb = np.concatenate([sample_stats["all"]["rgb"], sample_stats["hem"]["rgb"]])   # cells x 3
    assert np.all(np.abs(rgb.mean(axis=0) - [70, 30, 80]) < 6), rgb.mean(axis=0)
    assert np.all((rgb.std(axis=0) > 3) & (rgb.std(axis=0) < 14)), rgb.std(axis=0)   # real: about 8
    assert rgb[:, 2].mean() > rgb[:, 0].mean() > rgb[:, 1].mean()                     # violet
    within = np.concatenate([sample_stats["all"]["within"], sample_stats["hem"]["within"]]).mean(axis=0)
    assert np.all((within > 6) & (within < 14)), within                               # mottled: real about 10


def test_generate_refuses_bad_sizes_and_existing_tree(small_tree, tmp_path):
    with pytest.raises(ValueError, match="n_hem"):
        synthetic.generate(tmp_path, n_hem=0)
    with pytest.raises(ValueError, match="images_per_patient"):
        synthetic.generate(tmp_path, images_per_patient=-1)
    with pytest.raises(ValueError, match="difficulty must be a number from 0 to 0.5"):
        synthetic.generate(tmp_path, difficulty=0.7)
    with pytest.raises(ValueError, match="cell_skew"):
        synthetic.generate(tmp_path, cell_skew=-1.0)
    with pytest.raises(ValueError, match="already exists"):
        synthetic.generate(small_tree.parent, **SMALL)


def test_cli_writes_and_labels_generated_data(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--all-patients", "1", "--hem-patients", "1",
                           "--images-per-patient", "1", "--prelim-patients", "0", "--final-patients", "0",
                           "--workers", "1", "--cell-skew", "0", "--difficulty", "0"]) == 0
    out = capsys.readouterr().out
    assert "GENERATED" in out and "not C-NMC" in out and str(tmp_path / "C-NMC_Leukemia") in out
    assert len(list((tmp_path / "C-NMC_Leukemia").rglob("*.bmp"))) == 2
    assert synthetic.main(["--out", str(tmp_path)]) == 2                # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        synthetic.main(["--help"])
    assert done.value.code == 0


@pytest.fixture
def tiny_defaults(monkeypatch):
    for key, value in dict(n_all=1, n_hem=1, images_per_patient=2, n_prelim=1, n_final=0, **PLAIN).items():
        monkeypatch.setitem(synthetic.DEFAULTS, key, value)


def test_default_dataset_builds_once_under_env_root(tmp_path, monkeypatch, tiny_defaults):
    monkeypatch.setenv("LEUKTUNE_DATA", str(tmp_path / "data"))
    calls = []
    real_generate = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    results = []
    threads = [threading.Thread(target=lambda: results.append(synthetic.default_dataset(workers=1))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "data" / "C-NMC_Leukemia"] * 2 and len(calls) == 1   # the lock held
    assert json.loads((results[0] / "GENERATED.json").read_text())["generated"] is True
    assert synthetic.default_dataset() == results[0] and len(calls) == 1             # reused, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["data"]


def test_default_dataset_leaves_nothing_when_interrupted(tmp_path, monkeypatch, tiny_defaults):
    written = []

    def fail_on_third(task):
        if len(written) == 2:
            raise KeyboardInterrupt
        synthetic.Image.fromarray(np.zeros((450, 450, 3), np.uint8)).save(task[0], format="BMP")
        written.append(task[0])

    monkeypatch.setattr(synthetic, "_write_cell", fail_on_third)
    root = tmp_path / "cache" / "generated"
    with pytest.raises(KeyboardInterrupt):
        synthetic.default_dataset(root, workers=1)
    assert written and not any(Path(p).exists() for p in written)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_default_dataset_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a generated set")
    with pytest.raises(ValueError, match="no complete generated set"):
        synthetic.default_dataset(tmp_path / "mine")


def test_discover_reads_the_generated_tree(small_tree):
    layout = pytest.importorskip("leukmodels.data.layout")
    manifest = layout.discover(small_tree.parent)
    assert manifest.attrs["generated"] is True and manifest.attrs["layout"] == "kaggle"
    per_image = SMALL["images_per_patient"]
    counts = manifest.groupby("source").size().to_dict()
    assert counts == {"fold_0": 2 * per_image, "fold_1": 2 * per_image, "fold_2": 2 * per_image,
                      "prelim_test": SMALL["n_prelim"] * per_image, "final_test": SMALL["n_final"] * per_image}
    train = manifest[manifest["source"].str.startswith("fold_")]
    assert train.groupby("patient").size().eq(per_image).all() and train["patient"].nunique() == 6
    assert "H3" in set(train["patient"]) and "h3" not in set(train["patient"])
    assert (train["label"] == 1).sum() == SMALL["n_all"] * per_image
    prelim = manifest[manifest["source"] == "prelim_test"]
    assert prelim["patient"].nunique() == SMALL["n_prelim"] and prelim["label"].notna().all()
    assert manifest.loc[manifest["source"] == "final_test", "label"].isna().all()


# ---- patient effects: the default set must make selection on a few validation patients as unreliable as real cells

@pytest.fixture(scope="module")
def skewed_plan() -> dict:
    """The plan (patients, counts, shifts, difficulty) of the default set, drawn without rendering a cell."""
    d = synthetic.DEFAULTS
    return synthetic._plan(0, d["n_all"], d["n_hem"], d["n_prelim"], d["n_final"], d["images_per_patient"],
                           d["cell_skew"], d["difficulty"])


def test_cells_per_patient_are_skewed_and_class_totals_exact(skewed_plan):
    per_patient = synthetic.DEFAULTS["images_per_patient"]
    train = skewed_plan["train"]
    counts = np.array(sorted((style["cells"] for _, _, style in train), reverse=True))
    assert counts.min() >= synthetic.MIN_CELLS
    assert counts[0] >= 4 * np.median(counts)                          # a few large patients, many small ones
    assert counts[:len(counts) // 10].sum() > 0.25 * counts.sum()      # the largest tenth hold over a quarter
    for is_all, n in ((True, synthetic.DEFAULTS["n_all"]), (False, synthetic.DEFAULTS["n_hem"])):
        assert sum(style["cells"] for _, a, style in train if a == is_all) == n * per_patient
    assert synthetic._cell_counts(np.random.default_rng(0), 5, 7, 0.0) == [7] * 5   # skew 0: equal patients


def test_patients_carry_their_own_stain_brightness_and_size(skewed_plan):
    styles = [style for split in skewed_plan.values() for _, _, style in split]
    gains = np.array([s["gain"] for s in styles])                      # patients x 3
    assert np.all(gains.std(axis=0) > 0.03)                            # stain gain per channel differs
    assert np.std([s["brightness"] for s in styles]) > 0.03
    assert np.std([s["area_offset"] for s in styles]) > 1_500           # px: some patients' cells larger
    assert np.abs(np.array([s["offset"] for s in styles])).max() > 3    # stain offset


def test_difficulty_varies_between_patients(skewed_plan):
    shares = np.array([style["flip_share"] for split in skewed_plan.values() for _, _, style in split])
    assert np.median(shares) < 0.1                                     # most patients easy ...
    assert shares.max() > 0.4                                          # ... a few mostly flipped: accuracy 0.26-1.0
    assert abs(shares.mean() - synthetic.DEFAULTS["difficulty"]) < 0.06
    plain = synthetic._plan(0, 3, 3, 0, 0, 4, 0.0, 0.0)
    assert all(style["flip_share"] == 0 for split in plain.values() for _, _, style in split)


def test_difficulty_pulls_some_patients_toward_the_other_class(skewed_plan):
    """A patient's class position is pulled toward the other class by its own share (same Beta as the flips): most
    patients barely, a few to the boundary or past it, where a model's threshold decides its accuracy."""
    d = synthetic.DEFAULTS
    styles = [(is_all, style) for split in skewed_plan.values() for _, is_all, style in split]
    pulls = np.array([style["pull"] for _, style in styles])
    assert np.median(pulls) < 0.1 and pulls.max() > 0.4
    assert abs(pulls.mean() - d["difficulty"]) < 0.06
    plain = synthetic._plan(0, d["n_all"], d["n_hem"], d["n_prelim"], d["n_final"], d["images_per_patient"],
                            d["cell_skew"], 0.0)                      # same stains and positions, no pull
    before = {pid: style["blastness"] for split in plain.values() for pid, _, style in split}
    for (pid, is_all, style) in (x for split in skewed_plan.values() for x in split):
        other = 0.0 if is_all else 1.0
        assert style["pull"] == 0 or abs(style["blastness"] - other) < abs(before[pid] - other)
    assert all(style["pull"] == 0 for split in plain.values() for _, _, style in split)


def test_flipped_cells_are_rendered_at_the_other_class(tmp_path):
    top = synthetic.generate(tmp_path, n_all=2, n_hem=2, images_per_patient=12, n_prelim=0, n_final=0, seed=4,
                             workers=1, cell_skew=1.0, difficulty=0.4)
    marker = json.loads((top / "GENERATED.json").read_text())
    effects = marker["patient_effects"]
    assert sorted(e["cells"] for e in effects.values()) != [12] * 4 and sum(e["cells"] for e in effects.values()) == 48
    files = list(top.glob("training_data/fold_*/*/*.bmp"))
    for pid, effect in effects.items():
        mine = [p for p in files if TRAIN_NAME.match(p.name)["patient"].upper() == pid.upper()]
        assert len(mine) == effect["cells"] and 0 <= effect["flipped_cells"] <= effect["cells"]
    assert sum(e["flipped_cells"] for e in effects.values()) > 0
    assert marker["parameters"]["difficulty"] == 0.4 and marker["generated"] is True
    again = synthetic._plan(4, 2, 2, 0, 0, 12, 1.0, 0.4)               # same seed, same draws
    assert {pid: style["cells"] for pid, _, style in again["train"]} == {p: e["cells"] for p, e in effects.items()}
