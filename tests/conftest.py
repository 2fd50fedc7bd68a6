"""Shared test fixtures.

- Every test session gets its own decode cache and default-data location under a tmp folder (LEUKTUNE_CACHE,
  LEUKTUNE_DATA), so no test reads or writes ~/.cache or the repo's results/.
- `tiny_cnmc`: a session-wide tiny generated C-NMC tree (Kaggle layout; 6 ALL + 4 HEM training patients of 8 cells,
  2 labelled prelim-test and 1 final-test patient, no patient skew or flipped cells); its path is the `C-NMC_Leukemia` folder. Built once in seconds.
- `tiny_search` / `evaluated`: a tiny search trained without Ray and evaluate's output on it, built once per session
  for the post-search commands' tests (tests/tiny_search.py).
- `s3`: a real S3 protocol server (moto) on localhost with a bucket, AWS_ENDPOINT_URL pointing at it.
- `ray_2cpu`: a local Ray with 2 logical CPUs for one test module (started on first use, shut down when the module
  ends), so Ray tests of one module share a start (~10 s) and modules stay independent of each other (a module that
  builds its own `ray.cluster_utils.Cluster` is not disturbed). Mark tests that use it `@pytest.mark.slow`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# equal patients without flipped cells: the tiny trees test the plumbing; tests/test_synthetic.py tests the patient
# effects of the default set
TINY = dict(n_all=6, n_hem=4, images_per_patient=8, n_prelim=2, n_final=1, seed=0, cell_skew=0.0, difficulty=0.0)


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Point the decode cache and the default generated data set at session tmp folders."""
    base = tmp_path_factory.mktemp("leuktune-home")
    saved = {key: os.environ.get(key) for key in ("LEUKTUNE_CACHE", "LEUKTUNE_DATA")}
    os.environ["LEUKTUNE_CACHE"] = str(base / "cache")
    os.environ["LEUKTUNE_DATA"] = str(base / "default-data")
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_cnmc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated C-NMC tree (see module docstring); returns its C-NMC_Leukemia folder."""
    from leukmodels.synthetic import generate

    out = tmp_path_factory.mktemp("tiny-cnmc")
    return Path(generate(out, workers=1, **TINY))


@pytest.fixture(scope="module")
def ray_2cpu():
    """A local Ray with 2 logical CPUs for this module, with the Ray Train settings a search's own Ray has
    (search/cli/ray_start.py: its processes inherit them); shut down at the module's end."""
    import ray

    from search.cli.ray_start import LOCAL_TRAIN_ENV, TRAIN_ENV

    if ray.is_initialized():  # a previous module leaked one: start from a clean slate
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**TRAIN_ENV, **LOCAL_TRAIN_ENV}.items():
            patch.setenv(key, value)
        ray.init(address="local", num_cpus=2, include_dashboard=True)  # "local": never attach to another Ray
        yield ray
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Paths, split and histories of the tiny search (tests/tiny_search.py)."""
    from tiny_search import build_tiny_search

    return build_tiny_search(tmp_path_factory.mktemp("tiny_search"))


@pytest.fixture(scope="session")
def evaluated(tiny_search: dict) -> dict:
    """search/evaluate.py's test metrics and predictions on the tiny search."""
    from tiny_search import evaluate_tiny_search

    return evaluate_tiny_search(tiny_search)


@pytest.fixture(scope="session")
def s3():
    """A real S3 protocol server (moto's, tests/s3_server.py) with the bucket `leuk`, for the whole session:
    AWS_ENDPOINT_URL and dummy keys are set in os.environ (restored at the end), so searches and Ray nodes started
    from the tests reach it. Each test uses its own prefix in the bucket."""
    from s3_server import S3Server

    server = S3Server.start(bucket="leuk")
    yield server
    server.close()
