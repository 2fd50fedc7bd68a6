"""`python search/predict.py`: ALL / HEM for cell images with a trained checkpoint (search/evaluation/predict.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/predict.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.evaluation.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
