"""The Ray layer over `leukmodels`, in rooms (docs/map.md): board, tuning, evaluation, reporting, cli, benchmark.

Importing this package imports nothing heavy; the board, evaluation and reporting rooms import neither Ray nor torch
at start (the leaderboard, evaluate, report and predict commands and their tests stay fast).
"""

from search.moved import install as _install_moved_names

_install_moved_names()
