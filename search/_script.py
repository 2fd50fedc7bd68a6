"""Imported (as a top-level module) by each CLI in this folder when it runs as `python search/<cli>.py`: Python then
puts only this folder on sys.path, so put the checkout's root first. The checkout, not an installed copy, is what
runs: `ray job submit --working-dir .` uploads it next to an editable install of another path."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
