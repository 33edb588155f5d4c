"""``python -m bridge`` runs the ``scbridge`` command line."""

import sys

from .cli import main

sys.exit(main())
