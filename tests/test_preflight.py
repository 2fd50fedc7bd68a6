"""The pure parts of search/cli/sizes.py and search/cli/preflight.py: the size arithmetic on numbers, the frames' size from
headers, Ray's start-up failure as one line, the settings file of a search that never launched. The CLI rows (exit
2, one line, nothing started) are in tests/test_bad_inputs.py."""
from __future__ import annotations

import json

from cnmc_trees import write_image
from search.board.paths import settings_path
from search.cli.preflight import forget_unlaunched, ray_start_error
from search.cli.sizes import footprint, frame_size, frame_warnings, gb, judge

CNMC_TRAINING = 10_661  # C-NMC 2019 training images: a search's train + val (the prelim test is the held-out test)


def test_footprint_is_images_x_3_x_s_x_s_per_size():
    need = footprint(CNMC_TRAINING, [1024])
    assert need.per_size == {1024: 10_661 * 3 * 1024 * 1024} == {1024: 33_536_606_208}
    assert need.largest == (1024, 33_536_606_208) and need.total == need.to_cache == 33_536_606_208
    assert gb(need.total) == "33.5 GB"  # the figure
    several = footprint(CNMC_TRAINING, [64, 96, 128], cached=[64, 96])
    assert several.total == 10_661 * 3 * (64 ** 2 + 96 ** 2 + 128 ** 2) == 949_767_168
    assert several.largest == (128, 10_661 * 3 * 128 ** 2)
    assert several.to_cache == 10_661 * 3 * 128 ** 2  # cached sizes cost no disk


def test_judge_refuses_with_the_numbers():
    need = footprint(CNMC_TRAINING, [1024])
    problem, _ = judge(need, free_disk=20_000_000_000, cache="/scratch/cache")
    assert problem == ("--image-sizes 1024: the decode cache needs 33.5 GB for 10,661 train+val images, 20.0 GB free "
                       "in /scratch/cache (point LEUKTUNE_CACHE at a larger disk or use smaller sizes)")
    problem, _ = judge(need, free_disk=10 ** 12, free_memory=16_000_000_000)
    assert problem == ("--image-sizes 1024: 10,661 train+val images at 1024 px take 33.5 GB decoded, 16.0 GB of "
                       "memory available")
    problem, _ = judge(need, free_disk=10 ** 12, free_memory=10 ** 12, object_store=8_000_000_000)
    assert problem == ("--image-sizes 1024: 10,661 train+val images at 1024 px take 33.5 GB decoded, more than Ray's "
                       "object store holds (8.0 GB on the smallest node)")
    assert judge(need, free_disk=34_000_000_000, free_memory=34_000_000_000, object_store=34_000_000_000) == (None, [])
    assert judge(footprint(CNMC_TRAINING, [1024], cached=[1024]), free_disk=0) == (None, [])  # nothing to write


def test_judge_warns_when_only_all_sizes_together_exceed_the_object_store():
    need = footprint(CNMC_TRAINING, [224, 256])  # 1.6 GB + 2.1 GB
    problem, warnings = judge(need, object_store=3_000_000_000)
    assert problem is None
    assert warnings == ["--image-sizes 224 256 take 3.7 GB decoded together, more than Ray's object store holds "
                        "(3.0 GB): Ray spills the sizes not in use to disk (slower)"]


def test_sizes_above_the_frames_are_warned_with_the_cost():
    need = footprint(CNMC_TRAINING, [224, 1024], frame=450)
    assert frame_warnings(need) == ["--image-sizes 1024 is larger than the frames themselves (450 px): upscaling adds "
                                    "no detail, only 5.2x the memory"]
    assert frame_warnings(footprint(CNMC_TRAINING, [1024])) == []  # frames unknown: nothing to say


def test_frame_size_reads_headers_and_skips_broken_files(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.bmp", 450, seed=i)) for i in range(5)]
    paths.append(str(write_image(tmp_path / "large.bmp", (600, 580))))
    (tmp_path / "broken.bmp").write_bytes(b"not an image")
    assert frame_size(paths + [str(tmp_path / "broken.bmp")]) == 600
    assert frame_size([str(tmp_path / "broken.bmp")]) is None


def test_frame_size_skips_a_decompression_bomb_for_the_decoder_to_name(tmp_path):
    from cnmc_trees import write_bomb_png

    paths = [str(write_image(tmp_path / "cell.bmp", 450)), str(write_bomb_png(tmp_path / "bomb.bmp", 20000))]
    assert frame_size(paths) == 450  # it raised PIL's DecompressionBombError out of the pre-flight


GCS_FAILURE = (  # what ray.init raised here when the GCS port was taken (Ray 2.60), shortened
    "Failed to start GCS.  Last 1 lines of error files:\n[2026-11-30 01:34:11,251 C 12281 12281] (gcs_server) "
    "grpc_server.cc:134:  Check failed: server_ Failed to start the grpc server. The specified port is 45815. If the "
    "server startup error message is `Address already in use`, ...\n\n.Please check "
    "/tmp/ray/session_2026-11-30_01-34-11_017746_12178/logs/gcs_server.out for details. Last connection error: None")


def test_ray_start_failure_is_one_line_saying_what_to_try():
    line = ray_start_error(None, RuntimeError(GCS_FAILURE))
    assert line == ("the local Ray did not start: Failed to start GCS (port 45815 may be taken; log /tmp/ray/"
                    "session_2026-11-30_01-34-11_017746_12178/logs/gcs_server.out); an earlier Ray of yours may still "
                    "hold its ports: `pgrep -u \"$USER\" -af gcs_server` lists yours (the port is on its command line) "
                    "and `kill <pid>` stops that one only, free space in /tmp, or a running Ray with --address auto")
    assert "ray stop" not in line  # it stops every Ray its user may stop: other searches', other people's as root
    timed_out = Exception("The current node timed out during startup. This could happen because some of the raylet "
                          "failed to startup or the GCS has become overloaded.")
    assert ray_start_error(None, timed_out).startswith(
        "the local Ray did not start: The current node timed out during startup; an earlier Ray of yours")
    assert "\n" not in ray_start_error("auto", ConnectionError("Could not find any running Ray instance.\nPlease ..."))


def test_settings_of_a_search_that_never_launched_are_forgotten(tmp_path):
    settings = settings_path(tmp_path / "results", "s")
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"family": ["resnet"]}))
    assert forget_unlaunched(settings, str(tmp_path / "ray"), "s") and not settings.exists()
    settings.write_text("{}")
    (tmp_path / "ray" / "s").mkdir(parents=True)
    (tmp_path / "ray" / "s" / "tuner.pkl").write_bytes(b"")  # Tune built its Tuner: --resume needs the settings
    assert not forget_unlaunched(settings, str(tmp_path / "ray"), "s") and settings.exists()
