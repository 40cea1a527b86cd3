"""The ``metaspike`` command's entry point (the console script and ``python -m metaspike``).

The command spends its first seconds importing torch and the library. Ctrl-C there would print a traceback from
whatever import it lands in (or, inside torch's native start-up, abort the process), so until :mod:`metaspike.app.cli`
is imported Ctrl-C ends the command at once with the one line it prints later, ``metaspike: interrupted``: nothing
has been written by then. A process that ignores Ctrl-C (started in the background) keeps ignoring it.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["main"]


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"metaspike: interrupted\n")
    os._exit(128 + signal.SIGINT)


def main() -> int:
    """Run the ``metaspike`` command on ``sys.argv``; returns its exit status (:func:`metaspike.app.cli.main`)."""
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if quiet:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from metaspike.app.cli import main as run_command

    if quiet:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_command()
    finally:  # (a Ctrl-C while the interpreter shuts down ends it quietly: it printed torch's finalizers' tracebacks)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
