"""``python -m metricgold_engine ...``: see :mod:`metricgold_engine.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
