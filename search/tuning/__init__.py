"""The Tune side of a search: its data, the space Optuna samples, one trial's training and reports, the schedulers and
samplers, PBT, warm start, cross-validated trials, the console, and the trial records that become leaderboard rows.
Imports `search.board` below it."""
