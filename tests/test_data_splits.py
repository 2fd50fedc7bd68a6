"""Patient-level splits: disjoint for every function and several seeds, stratified, seeded, clear small-set errors."""
import pandas as pd
import pytest

from leukmodels.data import DataError, check_disjoint, discover, kfold_by_patient, patient_table, split_by_patient
from cnmc_trees import default_spec, expected_counts, kaggle_tree, tiny_spec

SEEDS = [0, 1, 2, 7, 123]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return discover(kaggle_tree(tmp_path_factory.mktemp("kaggle")))


def classes_of(frame: pd.DataFrame) -> set:
    return set(frame.groupby("patient")["label"].first().astype(int))


def assert_patient_disjoint(sets) -> None:
    seen = {}
    for name, frame in sets.items():
        for patient in set(frame["patient"]):
            assert patient not in seen, f"{patient} in {seen.get(patient)} and {name}"
            seen[patient] = name


@pytest.mark.parametrize("seed", SEEDS)
def test_split_with_official_test(manifest, seed):
    splits = split_by_patient(manifest, val_fraction=0.2, seed=seed)
    assert set(splits) == {"train", "val", "test"}
    assert_patient_disjoint(splits)
    assert (splits["test"]["source"] == "prelim_test").all()
    assert len(splits["test"]) == expected_counts()["prelim"]
    training = manifest[manifest["source"].str.startswith("fold_")]
    assert len(splits["train"]) + len(splits["val"]) == len(training)  # every labelled training image used once
    assert set(splits["train"].index).isdisjoint(splits["val"].index)
    for frame in splits.values():
        assert classes_of(frame) == {0, 1} and frame["label"].notna().all()
    assert splits["val"]["patient"].nunique() == round(0.2 * 13 + 0.5)  # 13 training patients -> 3 in val


@pytest.mark.parametrize("seed", SEEDS)
def test_split_without_official_test(manifest, seed):
    splits = split_by_patient(manifest, val_fraction=0.2, test_fraction=0.25, seed=seed, use_official_test=False)
    assert_patient_disjoint(splits)
    labelled = manifest[manifest["label"].notna()]
    assert sum(len(f) for f in splits.values()) == len(labelled)
    assert {p for f in splits.values() for p in f["patient"]} == set(labelled["patient"])
    for frame in splits.values():
        assert classes_of(frame) == {0, 1}
    assert splits["test"]["patient"].nunique() == 5  # ceil(0.25 * 18 patients)


def test_splits_are_deterministic_by_seed(manifest):
    first, again = split_by_patient(manifest, seed=3), split_by_patient(manifest, seed=3)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    patients_by_seed = {tuple(sorted(set(split_by_patient(manifest, seed=s, use_official_test=False)["val"]
                                         ["patient"]))) for s in SEEDS}
    assert len(patients_by_seed) > 1  # the seed matters


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_covers_each_patient_once_as_validation(manifest, seed, k):
    folds = kfold_by_patient(manifest, k=k, seed=seed)
    assert len(folds) == k
    training = manifest[manifest["source"].str.startswith("fold_")]
    val_patients = []
    for train, val in folds:
        assert_patient_disjoint({"train": train, "val": val})
        assert classes_of(train) == {0, 1} and classes_of(val) == {0, 1}
        assert len(train) + len(val) == len(training)
        assert "prelim_test" not in set(train["source"]) | set(val["source"])
        val_patients += sorted(set(val["patient"]))
    assert sorted(val_patients) == sorted(set(training["patient"]))


def test_kfold_is_deterministic_by_seed(manifest):
    first, again = kfold_by_patient(manifest, k=3, seed=11), kfold_by_patient(manifest, k=3, seed=11)
    for (train_a, val_a), (train_b, val_b) in zip(first, again):
        pd.testing.assert_frame_equal(train_a, train_b)
        pd.testing.assert_frame_equal(val_a, val_b)


def test_kfold_can_include_the_official_test(manifest):
    folds = kfold_by_patient(manifest, k=3, seed=0, exclude_official_test=False)
    assert sum(len(val) for _, val in folds) == len(manifest[manifest["label"].notna()])


def test_check_disjoint_names_the_patient(manifest):
    splits = split_by_patient(manifest, seed=0)
    leaked = pd.concat([splits["train"], splits["val"].iloc[:1]])
    patient = splits["val"]["patient"].iloc[0]
    with pytest.raises(DataError, match=rf"patient {patient} is in both val and train|patient {patient} is in both "
                                        rf"train and val"):
        check_disjoint({"val": splits["val"], "train": leaked})
    with pytest.raises(DataError, match=rf"patient {patient} is in both set 0 and set 1"):
        check_disjoint([leaked, splits["val"]])
    check_disjoint(splits)  # the real split passes


def test_patient_table_one_row_per_patient(manifest):
    table = patient_table(manifest)
    expected = expected_counts()
    assert table["images"].to_dict() == expected["per_patient"]
    assert table["label"].to_dict() == expected["patient_class"]


def test_patient_with_both_classes_is_refused(manifest):
    mixed = manifest.copy()
    mixed.loc[mixed.index[0], "label"] = 1 - mixed.loc[mixed.index[0], "label"]
    with pytest.raises(DataError, match=rf"patient {mixed.loc[mixed.index[0], 'patient']} has both ALL and HEM"):
        split_by_patient(mixed)


def test_small_set_errors_name_the_missing_class(tmp_path):
    one_hem = discover(kaggle_tree(tmp_path / "a", tiny_spec(all_patients=4, hem_patients=1)))
    with pytest.raises(DataError, match="drawing a test set needs at least 2 HEM patients, found 1"):
        split_by_patient(one_hem, use_official_test=False)
    two_hem = discover(kaggle_tree(tmp_path / "b", tiny_spec(all_patients=4, hem_patients=2)))
    with pytest.raises(DataError, match=r"(leaves no HEM patient|needs at least 2 HEM patients, found 1)"):
        split_by_patient(two_hem, use_official_test=False)  # test takes a HEM patient, val needs the other too
    with pytest.raises(DataError, match="5-fold split needs at least 5 ALL patients, found 4"):
        kfold_by_patient(two_hem, k=5)
    three_hem = discover(kaggle_tree(tmp_path / "c", tiny_spec(all_patients=4, hem_patients=3)))
    with pytest.raises(DataError, match=r"cannot draw a test set \(test_fraction 0.05\) from 7 patients stratified "
                                        r"by class: The test_size = 1 should be greater or equal to the number of "
                                        r"classes = 2"):
        split_by_patient(three_hem, test_fraction=0.05, use_official_test=False)
    with pytest.raises(DataError, match=r"cannot draw a val set \(val_fraction 0.05\) from 4 patients"):
        split_by_patient(three_hem, val_fraction=0.05, test_fraction=0.3, use_official_test=False)


def test_bad_arguments(manifest):
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        split_by_patient(manifest, val_fraction=1.5)
    with pytest.raises(DataError, match="leaves no training data"):
        split_by_patient(manifest, val_fraction=0.5, test_fraction=0.5, use_official_test=False)
    with pytest.raises(DataError, match="k must be an integer >= 2"):
        kfold_by_patient(manifest, k=1)
    unlabelled = manifest[manifest["label"].isna()]
    with pytest.raises(DataError, match="no labelled images"):
        split_by_patient(unlabelled)


def test_default_spec_has_enough_patients_for_defaults(manifest):
    # the module's defaults (k=5, fractions 0.2) must work on the test tree: 8 ALL + 5 HEM training patients
    assert len(default_spec().training) == 13
    assert len(kfold_by_patient(manifest)) == 5


def _uneven_manifest(seed: int = 0) -> pd.DataFrame:
    """40 ALL and 20 HEM patients whose cell counts range from 5 to 200, as real patients' do."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for number in range(60):
        label = 1 if number < 40 else 0
        for cell in range(int(rng.integers(5, 200))):
            rows.append({"path": f"/x/UID_{number}_{cell}_1.bmp", "label": label, "patient": f"P{number}",
                         "source": "fold_0", "image_id": f"UID_{number}_{cell}_1"})
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("Int8")
    return frame


def _all_share(frame: pd.DataFrame) -> float:
    return float(frame["label"].astype(float).mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_validation_draw_keeps_the_training_class_ratio_and_its_share_of_the_images(seed):
    """The drawn validation patients hold about val_fraction of the images, with the training set's ALL ratio by
    image: a draw by patient alone can give the validation set a few small patients of mostly one class."""
    manifest = _uneven_manifest()
    splits = split_by_patient(manifest, val_fraction=0.2, test_fraction=0.2, seed=seed)
    assert_patient_disjoint(splits)
    train, val = splits["train"], splits["val"]
    assert abs(_all_share(val) - _all_share(train)) < 0.03
    assert abs(len(val) / len(manifest) - 0.2) < 0.03
    # the same seed draws the same patients; another seed others
    assert set(split_by_patient(manifest, val_fraction=0.2, test_fraction=0.2, seed=seed)["val"]["patient"]) == \
        set(val["patient"])
