"""`python -m search.benchmark`: search/benchmark/runner.py."""
import sys

from search.benchmark.runner import main

sys.exit(main())
