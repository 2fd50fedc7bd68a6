"""`python search/export.py`: a checkpoint exported to TorchScript and ONNX, checked against PyTorch (search/evaluation/export.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/export.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.evaluation.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
