"""discover(): both C-NMC layouts, every quirk, the counts, and each error with its message."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from leukmodels.data import DataError, discover, parse_name, summary
from cnmc_trees import (LABELS_CSV, Patient, TreeSpec, default_spec, expected_counts, kaggle_tree, tcia_tree,
                              write_image, write_labels_csv)


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    return kaggle_tree(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    return tcia_tree(tmp_path_factory.mktemp("tcia"), nested=True)


def check_counts(manifest: pd.DataFrame) -> None:
    expected = expected_counts()
    labelled = manifest[manifest["label"].notna()]
    per_source_class = labelled.groupby(["source", "label"]).size()
    assert {(s, int(lab)): n for (s, lab), n in per_source_class.items()} == expected["per_source_class"]
    assert labelled.groupby("patient").size().to_dict() == expected["per_patient"]
    patient_class = labelled.groupby("patient")["label"].agg(["min", "max"])
    assert (patient_class["min"] == patient_class["max"]).all()
    assert patient_class["max"].astype(int).to_dict() == expected["patient_class"]
    table = summary(manifest)
    training = table.loc[["fold_0", "fold_1", "fold_2"]].sum()
    assert (training["images"], training["all"], training["hem"]) == (
        expected["training"], expected["training_all"], expected["training_hem"])
    assert table.loc["prelim_test", "images"] == expected["prelim"]
    assert table.loc["final_test", "unlabelled"] == expected["final"]
    assert table.loc["total", "patients"] == len(expected["per_patient"])


def test_kaggle_layout_counts_and_columns(kaggle):
    manifest = discover(kaggle)
    assert list(manifest.columns) == ["path", "label", "patient", "source", "image_id"]
    assert str(manifest["label"].dtype) == "Int8"
    assert manifest.attrs == {"root": str(kaggle), "layout": "kaggle", "generated": False}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["path"])
    assert list(dict.fromkeys(manifest["source"])) == ["fold_0", "fold_1", "fold_2", "prelim_test", "final_test"]
    check_counts(manifest)


def test_parent_of_top_gives_the_same_manifest(kaggle, tcia):
    pd.testing.assert_frame_equal(discover(kaggle.parent), discover(kaggle))
    pd.testing.assert_frame_equal(discover(tcia.parent), discover(tcia))


def test_tcia_layout_with_nested_same_named_folders(tcia):
    manifest = discover(tcia)
    assert manifest.attrs["layout"] == "tcia"
    assert any("C-NMC_training_data/C-NMC_training_data/fold_0" in p for p in manifest["path"])
    check_counts(manifest)


@pytest.mark.parametrize("nested,csv_inside", [(False, False), (False, True), (True, True)])
def test_tcia_variants_flat_and_csv_inside(tmp_path, nested, csv_inside):
    top = tcia_tree(tmp_path, nested=nested, csv_inside=csv_inside)
    check_counts(discover(top))


def test_kaggle_and_tcia_agree_row_for_row(kaggle, tcia):
    columns = ["label", "patient", "source", "image_id"]
    pd.testing.assert_frame_equal(discover(kaggle)[columns], discover(tcia)[columns])


def test_lower_case_h3_is_normalised(kaggle):
    manifest = discover(kaggle)
    assert "H3" in set(manifest["patient"]) and "h3" not in set(manifest["patient"])
    assert any(Path(p).name.startswith("UID_h3_") for p in manifest.loc[manifest["patient"] == "H3", "path"])
    assert parse_name("UID_h3_12_4_hem.bmp") == ("H3", 0)
    assert parse_name("UID_57_29_1_all.bmp") == ("57", 1)
    assert parse_name("UID_H21_3_18_hem") == ("H21", 0)
    assert parse_name("17.bmp") is None


def test_prelim_numbered_images_take_names_and_labels_from_csv(kaggle):
    manifest = discover(kaggle)
    prelim = manifest[manifest["source"] == "prelim_test"]
    csv = pd.read_csv(kaggle / "validation_data" / LABELS_CSV)
    by_number = {name.removesuffix(".bmp"): (orig.removesuffix(".bmp"), lab)
                 for orig, name, lab in csv.itertuples(index=False)}
    for row in prelim.itertuples():
        original, label = by_number[Path(row.path).stem]
        assert row.image_id == original and row.label == label
        assert row.patient == parse_name(original)[0]
    assert [Path(p).stem for p in prelim["path"]] == [str(n) for n in range(1, len(prelim) + 1)]


def test_final_test_is_listed_unlabelled(kaggle):
    final = discover(kaggle).query("source == 'final_test'")
    assert len(final) == expected_counts()["final"]
    assert final["label"].isna().all() and (final["patient"] == "").all()


def test_generated_marker_is_reported(tmp_path):
    top = kaggle_tree(tmp_path)
    (top / "GENERATED.json").write_text(json.dumps({"generator": "test"}))
    assert discover(tmp_path).attrs["generated"] is True


def test_prelim_folder_with_original_names_needs_no_csv(tmp_path):
    top = kaggle_tree(tmp_path, TreeSpec(default_spec().training, (), final_images=0))
    write_image(top / "validation_data" / "C-NMC_test_prelim_phase_data" / "UID_H77_1_1_hem.bmp")
    prelim = discover(top).query("source == 'prelim_test'")
    assert prelim[["patient", "image_id"]].values.tolist() == [["H77", "UID_H77_1_1_hem"]]
    assert prelim["label"].tolist() == [0]


# ---- errors: one line, naming the path ----------------------------------------------------------------------

def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"data root not found: .*nowhere") as error:
        discover(tmp_path / "nowhere")
    one_line(error)


def test_root_without_images(tmp_path):
    (tmp_path / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").mkdir(parents=True)
    with pytest.raises(DataError, match=f"no C-NMC images under {tmp_path}"):
        discover(tmp_path)
    with pytest.raises(DataError, match="no C-NMC images under"):
        discover(tmp_path / "C-NMC_Leukemia" / "training_data" / "fold_0")


def test_unparseable_names_show_the_first_few(tmp_path):
    top = kaggle_tree(tmp_path)
    for i in range(5):
        write_image(top / "training_data" / "fold_1" / "hem" / f"cell_{i}.bmp")
    with pytest.raises(DataError, match=r"5 file name\(s\) under .*training_data do not parse as "
                                        r"UID_<patient>_<image>_<cell>_<all\|hem>: cell_0.bmp, cell_1.bmp, "
                                        r"cell_2.bmp, \.\.\. \(2 more\)") as error:
        discover(top)
    one_line(error)


def test_class_folder_contradicting_name_suffix(tmp_path):
    top = kaggle_tree(tmp_path)
    write_image(top / "training_data" / "fold_0" / "all" / "UID_H90_1_1_hem.bmp")
    with pytest.raises(DataError, match=r"contradicts their name suffix, e\.g\. .*fold_0/all/UID_H90_1_1_hem\.bmp"):
        discover(top)


@pytest.mark.parametrize("folder,name", [("all", "UID_H77_1_1_all.bmp"), ("hem", "UID_77_1_1_hem.bmp"),
                                         ("all", "UID_h77_1_1_all.bmp")])
def test_patient_id_contradicting_its_class_folder(tmp_path, folder, name):
    """Normal (HEM) subjects are H<n> in C-NMC and ALL subjects plain numbers: a file saying otherwise is mislabelled
    (its suffix agrees with its folder, so only the patient id gives it away)."""
    top = kaggle_tree(tmp_path)
    bad = write_image(top / "training_data" / "fold_1" / folder / name)
    with pytest.raises(DataError, match=r"1 file\(s\) name a patient whose id contradicts their class folder "
                                        r"\(normal patients are H<n>, ALL patients plain numbers\), e\.g\. ") as error:
        discover(top)
    assert one_line(error).endswith(str(bad))


def test_csv_patient_id_contradicting_its_label(tmp_path):
    top = kaggle_tree(tmp_path)

    def contradicting_prefix(frame: pd.DataFrame) -> pd.DataFrame:  # suffix agrees with the label, patient id not
        row = frame["new_names"] == "1.bmp"
        wrong = {"1": "UID_H31_9_9_all.bmp", "0": "UID_31_9_9_hem.bmp"}[frame.loc[row, "labels"].item()]
        return frame.assign(Patient_ID=frame["Patient_ID"].where(~row, wrong))

    path = rewrite_csv(top, contradicting_prefix)
    with pytest.raises(DataError, match=rf"labels CSV {path}: Patient_ID UID_H?31_9_9_(all|hem)\.bmp of 1 names a "
                                        r"patient whose id contradicts its label") as error:
        discover(top)
    one_line(error)


def test_prelim_original_names_contradicting_their_suffix(tmp_path):
    top = kaggle_tree(tmp_path, TreeSpec(default_spec().training, (), final_images=0))
    bad = write_image(top / "validation_data" / "C-NMC_test_prelim_phase_data" / "UID_H78_1_1_all.bmp")
    with pytest.raises(DataError, match=r"1 prelim-test file\(s\) name a patient whose id contradicts") as error:
        discover(top)
    assert one_line(error).endswith(str(bad))


def test_missing_labels_csv(tmp_path):
    top = kaggle_tree(tmp_path)
    (top / "validation_data" / LABELS_CSV).unlink()
    with pytest.raises(DataError, match=rf"labels CSV {LABELS_CSV} missing for 11 prelim-test images in "
                                        r".*validation_data/C-NMC_test_prelim_phase_data"):
        discover(top)


def rewrite_csv(top: Path, transform) -> Path:
    path = top / "validation_data" / LABELS_CSV
    frame = transform(pd.read_csv(path, dtype=str))
    frame.to_csv(path, index=False)
    return path


def test_labels_csv_with_wrong_columns(tmp_path):
    top = kaggle_tree(tmp_path)
    path = rewrite_csv(top, lambda f: f.rename(columns={"labels": "label"}))
    with pytest.raises(DataError, match=rf"labels CSV {path} has columns Patient_ID,new_names,label; expected "
                                        r"Patient_ID,new_names,labels"):
        discover(top)


def test_image_without_csv_row(tmp_path):
    top = kaggle_tree(tmp_path)
    rewrite_csv(top, lambda f: f[f["new_names"] != "4.bmp"])
    with pytest.raises(DataError, match=r"1 image\(s\) in .*C-NMC_test_prelim_phase_data have no row in .*: 4$"):
        discover(top)


def test_csv_row_without_image(tmp_path):
    top = kaggle_tree(tmp_path)
    (top / "validation_data" / "C-NMC_test_prelim_phase_data" / "7.bmp").unlink()
    with pytest.raises(DataError, match=rf"1 row\(s\) of .*{LABELS_CSV} name a file missing from .*: 7$"):
        discover(top)


def test_csv_label_contradicting_patient_id(tmp_path):
    top = kaggle_tree(tmp_path)
    path = rewrite_csv(top, lambda f: f.assign(labels=f["labels"].where(f["new_names"] != "1.bmp",
                                                                        str(1 - int(f.loc[0, "labels"])))))
    with pytest.raises(DataError, match=rf"labels CSV {path}: label of 1 contradicts its Patient_ID UID_"):
        discover(top)


def test_csv_bad_label_value(tmp_path):
    top = kaggle_tree(tmp_path)
    rewrite_csv(top, lambda f: f.assign(labels=f["labels"].where(f["new_names"] != "2.bmp", "ALL")))
    with pytest.raises(DataError, match=r"label of 2 is 'ALL', expected 1 \(ALL\) or 0 \(HEM\)"):
        discover(top)


def test_empty_labels_csv(tmp_path):
    top = kaggle_tree(tmp_path)
    path = write_labels_csv(top / "validation_data" / LABELS_CSV, [])
    with pytest.raises(DataError, match=rf"labels CSV {path} has no rows"):
        discover(top)


def test_duplicate_image_names(tmp_path):
    top = kaggle_tree(tmp_path)
    shutil.copy(top / "training_data" / "fold_0" / "all" / "UID_11_1_1_all.bmp",
                top / "training_data" / "fold_2" / "all" / "UID_11_1_1_all.bmp")
    with pytest.raises(DataError, match=r"duplicate image name UID_11_1_1_all: .*fold_0/all/UID_11_1_1_all.bmp and "
                                        r".*fold_2/all/UID_11_1_1_all.bmp"):
        discover(top)


def test_two_data_sets_under_one_parent_are_ambiguous(tmp_path):
    kaggle_tree(tmp_path)
    tcia_tree(tmp_path, TreeSpec((Patient("1", 1, 1),), (), final_images=0))
    with pytest.raises(DataError, match=rf"several C-NMC data sets under {tmp_path}: C-NMC, C-NMC_Leukemia"):
        discover(tmp_path)


def test_labels_csv_written_with_a_byte_order_mark_and_spaces(tmp_path):
    top = kaggle_tree(tmp_path)
    path = top / "validation_data" / LABELS_CSV
    lines = path.read_text().splitlines()
    path.write_text("\ufeff" + "\n".join([lines[0].replace(",", ", ")] + [l.replace(",", ", ") for l in lines[1:]]))
    check_counts(discover(top))
