"""``python -m metaspike`` runs the command-line interface."""

import sys

from metaspike.app.command import main

sys.exit(main())
