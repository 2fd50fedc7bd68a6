"""The one place a search's settings are resolved: the flags (search/cli/flags.py), with --resume's saved file in
place of the flags not given, and the hardware profile of the cluster Ray is connected to (search/cli/profiles.py),
into one frozen SearchSettings (search/board/settings.py) that everything below the command line reads.

    flags, notes = resumed_flags(parse_args(argv))               # before Ray starts: a clash is refused early
    settings, why = resolve_settings(flags, nodes, node_types)   # once Ray is up: the profile fills the rest

--warm-start is a saved setting like the others; the configs it carries are computed once the search space is known
(search/tuning/tuner.py) and travel beside the settings.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from search.board.settings import SearchSettings, resumed_values
from search.cli.flags import validate
from search.cli.profiles import apply_profile, choose_profile

RESUMED_PROFILE = "the saved settings of the search"


def resumed_flags(flags: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """--resume: a copy of the flags with the saved settings in place of those not given (a contradiction is a
    ValueError naming the flag), and one note per setting the resumed run changes. Without --resume: the flags."""
    if not flags.resume:
        return flags, []
    values, notes = resumed_values(vars(flags), flags.given)
    return argparse.Namespace(**values), notes


def resolve_settings(flags: argparse.Namespace, nodes: list[dict[str, Any]],
                     node_types: Optional[dict[str, dict]] = None) -> tuple[SearchSettings, str]:
    """(the search's settings, why its profile): the profile a resumed search saved, or the one the cluster's nodes
    (and the GPU nodes its autoscaler can start) call for; each setting no flag gave comes from it. ValueError naming
    a flag the profile's values contradict."""
    saved_profile = vars(flags).get("profile") if flags.resume else None
    profile, why = (saved_profile, RESUMED_PROFILE) if saved_profile else choose_profile(flags, nodes, node_types)
    settings = SearchSettings.from_values(apply_profile(vars(flags), profile, nodes, node_types))
    validate(settings)
    return settings, why


__all__ = ["resumed_flags", "resolve_settings"]
