"""The ``metaspike`` command's entry point (the console script and ``python -m metaspike``).

The command spends its first seconds importing torch and the library. Ctrl-C there would print a traceback from
whatever import it lands in (or, inside torch's native start-up, abort the process), so until :mod:`metaspike.app.cli`
is imported Ctrl-C ends the command at once with the one line it prints later, ``metaspike: interrupted``, and a
SIGTERM with ``metaspike: terminated (SIGTERM)`` (it ended the process without a word): nothing has been written by
then. A process that ignores either signal (Ctrl-C in one started in the background) keeps ignoring it while the
command starts; once it runs, Ctrl-C is still ignored there, and a SIGTERM stops the run as Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["main"]


#: the line each signal ends the start-up with, and the handler that was in place (restored once started)
_WHILE_STARTING = {signal.SIGINT: (b"metaspike: interrupted\n", signal.default_int_handler),
                   signal.SIGTERM: (b"metaspike: terminated (SIGTERM)\n", signal.SIG_DFL)}


def _stopped_while_starting(signum: int, frame: FrameType | None) -> None:
    os.write(2, _WHILE_STARTING[signum][0])
    os._exit(128 + signum)


def main() -> int:
    """Run the ``metaspike`` command on ``sys.argv``; returns its exit status (:func:`metaspike.app.cli.main`)."""
    caught = [signum for signum, (_, usual) in _WHILE_STARTING.items() if signal.getsignal(signum) is usual]
    for signum in caught:
        signal.signal(signum, _stopped_while_starting)
    from metaspike.app.cli import main as run_command

    for signum in caught:
        signal.signal(signum, _WHILE_STARTING[signum][1])
    try:
        return run_command()
    finally:  # (a Ctrl-C while the interpreter shuts down ends it quietly: it printed torch's finalizers' tracebacks)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
