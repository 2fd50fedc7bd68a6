"""`python search/leaderboard.py`: the leaderboard: rank, filter, print (search/board/leaderboard.py; `--help`)."""
import sys

if __package__ in (None, ""):  # run as `python search/leaderboard.py`: this checkout first (search/_script.py)
    import _script  # noqa: F401

from search.board.leaderboard import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
