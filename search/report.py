"""`python search/report.py`: one HTML page per search (search/reporting/report.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/report.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.reporting.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
