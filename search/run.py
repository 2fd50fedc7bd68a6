"""`python search/run.py`: the main job: a search over the model families, ranked into the leaderboard (search/cli/run.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/run.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.cli.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
