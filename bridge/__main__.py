"""``python -m bridge``: the ``bridge`` command line."""

import sys

from .cli import main

sys.exit(main())
