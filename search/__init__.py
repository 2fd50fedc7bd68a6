"""The thin Ray layer over `leukmodels`: search spaces, the trial driver, the CLI, concurrency planning, the leaderboard.

Importing this package imports nothing heavy: `search.tuning.plan` and `search.board.leaderboard` work without Ray (plan imports Ray
only inside `cluster_nodes()`), so the leaderboard CLI and unit tests stay fast.
"""

from search.moved import install as _install_moved_names

_install_moved_names()
