"""The leaderboard and the search's files: where they live (paths, storage, the Optuna study's URL), the row schema and
ranking, the parquet dataset, a search's own files copied to --storage, the one-driver-per-name lock, the Pareto front.
Imports no other room of `search/` and no Ray: the leaderboard CLI and its tests stay fast."""
