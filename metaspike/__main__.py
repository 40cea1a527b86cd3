"""``python -m metaspike`` runs the command-line interface."""

import sys

from metaspike.app.cli import main

sys.exit(main())
