"""`python search/evaluate.py`: the held-out test evaluation of a search's best trials (search/evaluation/evaluate.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/evaluate.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.evaluation.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
