"""decode(): whole-frame resize, every image mode, the on-disk cache (round trip, memory map, truncated and stale
entries rebuilt, atomic writes) and the errors for files that do not decode."""
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukmodels.data import DataError, DecodedSet, decode, default_cache_dir, discover, load_image
decode_module = importlib.import_module("leukmodels.data.decode")  # the package attribute is the function
from cnmc_trees import kaggle_tree, write_bomb_png, write_image

SIZE = 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return kaggle_tree(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture
def manifest(tree):
    return discover(tree)


def reference(path, size=SIZE) -> np.ndarray:
    """What one RGB square file must decode to: the whole frame, PIL bilinear, 3 x S x S."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_round_trip_equals_direct_decoding(manifest, tmp_path):
    direct = decode(manifest, SIZE, cache=False, progress=False)
    assert direct.images.shape == (len(manifest), 3, SIZE, SIZE) and direct.images.dtype == np.uint8
    first = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    second = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(first.images, direct.images)
    np.testing.assert_array_equal(second.images, direct.images)
    assert first.fingerprint == second.fingerprint == direct.fingerprint
    square = manifest.index[manifest["source"] != "final_test"][:5]
    for i in square:  # pixel for pixel what PIL gives for the whole frame
        np.testing.assert_array_equal(direct.images[i], reference(manifest.at[i, "path"]))
    names = cache_files(tmp_path)
    assert names == [f"cnmc-{SIZE}px-{first.fingerprint}.json", f"cnmc-{SIZE}px-{first.fingerprint}.npy"]


def test_reload_is_memory_mapped_and_read_only(manifest, tmp_path):
    decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    again = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    assert isinstance(again.images, np.memmap) and again.images.mode == "r"
    with pytest.raises(ValueError):
        again.images[0, 0, 0, 0] = 1


def test_labels_patients_and_ids_follow_the_manifest(manifest):
    decoded = decode(manifest, SIZE, cache=False, progress=False)
    assert decoded.labels.dtype == np.int64 and len(decoded) == len(manifest)
    expected = manifest["label"].astype("Int64").fillna(-1).tolist()
    assert decoded.labels.tolist() == expected and (decoded.labels[manifest["source"] == "final_test"] == -1).all()
    assert decoded.patients.tolist() == manifest["patient"].tolist()
    assert decoded.image_ids.tolist() == manifest["image_id"].tolist()
    part = decoded.subset([3, 0])
    assert isinstance(part, DecodedSet) and len(part) == 2
    np.testing.assert_array_equal(part.images, decoded.images[[3, 0]])
    assert part.image_ids.tolist() == [decoded.image_ids[3], decoded.image_ids[0]]


def test_truncated_cache_is_detected_and_rebuilt(manifest, tmp_path):
    built = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    array = tmp_path / f"cnmc-{SIZE}px-{built.fingerprint}.npy"
    whole = array.stat().st_size
    del built
    with open(array, "r+b") as handle:
        handle.truncate(whole // 2)
    rebuilt = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    assert array.stat().st_size == whole
    np.testing.assert_array_equal(rebuilt.images, decode(manifest, SIZE, cache=False, progress=False).images)


def test_cache_without_meta_is_rebuilt(manifest, tmp_path):
    built = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    meta = tmp_path / f"cnmc-{SIZE}px-{built.fingerprint}.json"
    meta.unlink()  # as after a crash between the array and the meta
    decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    assert meta.is_file()


def test_changed_file_makes_the_cache_stale(tmp_path):
    top = kaggle_tree(tmp_path / "data")
    manifest = discover(top)
    before = decode(manifest, SIZE, cache_dir=tmp_path / "cache", progress=False)
    changed = manifest.at[0, "path"]
    write_image(Path(changed), 16, seed=424242)
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    after = decode(discover(top), SIZE, cache_dir=tmp_path / "cache", progress=False)
    assert after.fingerprint != before.fingerprint
    np.testing.assert_array_equal(after.images[0], reference(changed))
    assert not np.array_equal(after.images[0], before.images[0])
    np.testing.assert_array_equal(after.images[1:], before.images[1:])


def test_key_depends_on_size_and_order(manifest, tmp_path):
    a = decode(manifest, SIZE, cache_dir=tmp_path, progress=False)
    b = decode(manifest, SIZE + 2, cache_dir=tmp_path, progress=False)
    c = decode(manifest.iloc[::-1], SIZE, cache_dir=tmp_path, progress=False)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    np.testing.assert_array_equal(c.images, a.images[::-1])


def test_process_pool_equals_serial(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_module, "CHUNK", 5)  # several chunks -> the spawn pool path with 2 workers
    pooled = decode(manifest, SIZE, cache_dir=tmp_path, workers=2, progress=True)
    serial = decode(manifest, SIZE, cache=False, workers=1, progress=False)
    np.testing.assert_array_equal(pooled.images, serial.images)


def test_default_cache_dir_from_environment(manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKTUNE_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    decoded = decode(manifest.iloc[:3], SIZE, progress=False)
    assert (tmp_path / "env-cache" / f"cnmc-{SIZE}px-{decoded.fingerprint}.npy").is_file()
    monkeypatch.delenv("LEUKTUNE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "leukemia-tune"


# ---- frames and modes ------------------------------------------------------------------------------------------

def test_whole_frame_is_resized_so_cell_size_survives(tmp_path):
    """A small and a large cell in same-size frames must stay small and large: no crop-to-cell."""
    sizes = {}
    for name, side in (("small", 10), ("large", 20)):
        pixels = np.zeros((40, 40, 3), np.uint8)
        pixels[20 - side // 2: 20 + side // 2, 20 - side // 2: 20 + side // 2] = 200
        Image.fromarray(pixels).save(tmp_path / f"{name}.bmp")
        decoded = load_image(str(tmp_path / f"{name}.bmp"), 20)
        sizes[name] = decoded[0].sum() / 200  # bright area in pixels of the 20 x 20 output
    assert sizes["small"] == pytest.approx(25, rel=0.1) and sizes["large"] == pytest.approx(100, rel=0.1)


def test_larger_frames_are_resized_too(manifest):
    final = manifest[manifest["source"] == "final_test"]
    assert {Image.open(p).size for p in final["path"]} == {(16, 16), (20, 20)}
    decoded = decode(final, SIZE, cache=False, progress=False)
    assert decoded.images.shape == (len(final), 3, SIZE, SIZE)
    for row, path in enumerate(final["path"]):
        np.testing.assert_array_equal(decoded.images[row], reference(path))


def test_non_square_frame_is_padded_on_black(tmp_path):
    pixels = np.full((10, 20, 3), 255, np.uint8)  # H 10 x W 20, all white
    Image.fromarray(pixels).save(tmp_path / "wide.bmp")
    decoded = load_image(str(tmp_path / "wide.bmp"), 20)
    assert decoded.shape == (3, 20, 20)
    assert (decoded[:, :5] == 0).all() and (decoded[:, 15:] == 0).all() and (decoded[:, 5:15] == 255).all()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    suffix = ".png" if mode in ("LA", "RGBA", "I;16") else ".tif" if mode == "CMYK" else ".bmp"
    path = write_image(tmp_path / f"cell{suffix}", 16, mode=mode, seed=5)
    decoded = load_image(str(path), 16)  # no resize: compare pixels exactly
    assert decoded.shape == (3, 16, 16) and decoded.dtype == np.uint8
    with Image.open(path) as image:
        assert image.mode == mode
        if mode == "I;16":
            expected = np.repeat((np.asarray(image).astype(np.uint32) // 257)[None].astype(np.uint8), 3, axis=0)
        else:
            expected = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.max() > 0  # the cell is visible, in particular the 16-bit one is scaled, not clipped to 255


def test_transparent_pixels_become_black_background(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    decoded = load_image(str(tmp_path / "alpha.png"), 4)
    assert (decoded[:, :2] == 255).all() and (decoded[:, 2:] == 0).all()


# ---- errors ----------------------------------------------------------------------------------------------------

def test_non_image_file_is_refused_by_name(tmp_path):
    bogus = tmp_path / "UID_1_1_1_all.bmp"
    bogus.write_text("not an image")
    with pytest.raises(DataError, match=rf"cannot decode image {bogus}: cannot identify image file"):
        load_image(str(bogus), SIZE)


def test_truncated_bmp_stops_decode_naming_it_and_writes_nothing(tmp_path, monkeypatch):
    top = kaggle_tree(tmp_path / "data")
    manifest = discover(top)
    broken = manifest.at[len(manifest) // 2, "path"]
    data = Path(broken).read_bytes()
    Path(broken).write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(decode_module, "CHUNK", 8)
    for workers in (1, 2):  # in-process and from a pool worker
        cache = tmp_path / f"cache{workers}"
        with pytest.raises(DataError, match=rf"cannot decode image {broken}: .*truncated") as error:
            decode(manifest, SIZE, cache_dir=cache, workers=workers, progress=False)
        assert "\n" not in str(error.value)
        assert cache_files(cache) == []  # nothing half-written


def test_missing_file_and_bad_arguments(manifest, tmp_path):
    gone = manifest.iloc[:2].copy()
    gone.loc[gone.index[1], "path"] = str(tmp_path / "gone.bmp")
    with pytest.raises(DataError, match=rf"image listed in the manifest is missing: {tmp_path / 'gone.bmp'}"):
        decode(gone, SIZE, cache_dir=tmp_path, progress=False)
    with pytest.raises(DataError, match="image size must be a positive integer, got 0"):
        decode(manifest, 0, cache_dir=tmp_path)
    with pytest.raises(DataError, match="nothing to decode"):
        decode(manifest.iloc[:0], SIZE, cache_dir=tmp_path)


def test_bench_io_measure_runs_on_a_tiny_tree(tmp_path):
    from leukmodels.data.bench_io import measure, write_bench_tree

    root = write_bench_tree(tmp_path / "data", images=6, frame=32)
    result = measure(root, size=16, batch_size=4, workers=0, cache_dir=tmp_path / "cache")
    assert result["images"] == 6 and result["size"] == 16
    assert result["cached_images_per_s"] > 0 and result["imagefolder_images_per_s"] > 0
    assert result["ratio_cached_vs_imagefolder"] > 0


@pytest.mark.parametrize("side", [20000, 10000])  # PIL's DecompressionBombError, and its warning turned into one
def test_a_decompression_bomb_is_refused_by_name_before_it_is_decoded(side, tmp_path, monkeypatch):
    top = kaggle_tree(tmp_path / "data")
    manifest = discover(top)
    bomb = manifest.at[len(manifest) // 2, "path"]
    write_bomb_png(Path(bomb), side)  # a PNG under a .bmp name: PIL goes by the content
    with pytest.raises(DataError, match=rf"cannot decode image {bomb}: Image size \({side * side} pixels\) exceeds"):
        load_image(bomb, SIZE)
    monkeypatch.setattr(decode_module, "CHUNK", 8)
    with pytest.raises(DataError, match=rf"cannot decode image {bomb}: "):  # the search's decode: from a pool worker
        decode(manifest, SIZE, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert cache_files(tmp_path / "cache") == []
