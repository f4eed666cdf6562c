"""`python -m bench`: every benchmark, results in bench/results.md and bench/results.json (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
