"""`python -m search.benchmark`: how much training each search strategy needs and which selection rule picks a model that
holds on unseen patients; plus the leaderboard append cost and a DDP trial's timeline. Imports every other room."""
