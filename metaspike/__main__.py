"""``python -m metaspike`` runs the command-line interface."""

import sys

from metaspike.cli import main

sys.exit(main())
