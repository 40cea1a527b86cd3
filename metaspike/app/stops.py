"""Stops of the ``metaspike`` command (Ctrl-C, SIGTERM) that must not be lost.

Python runs a signal's handler wherever the main thread is, and where that is a finalizer (a weak reference's
callback, a ``__del__``: matplotlib's, while figures are drawn) the exception it raises is only printed ("Exception
ignored in ...") and the command went on. :func:`keeping_stops` installs a ``sys.unraisablehook`` that keeps such a
stop and sends it again from a thread (at once, mostly); :func:`raise_kept_stop`, called where a stop would be named
(the end of a run's guard, the end of the command), raises one not yet delivered, so none ends unseen.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

__all__ = ["Terminated", "stop_on_sigterm", "caused_by_sigterm", "handling_stops", "keeping_stops", "raise_kept_stop",
           "forget_kept_stop"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's time limit, ``kill``, ``docker stop``) in the command's own process: it stops the
    work as Ctrl-C does, so a run keeps what it wrote and the message names the command that continues it.

    Example:
        >>> issubclass(Terminated, KeyboardInterrupt)
        True
    """


#: Seconds after a SIGTERM in which another one is the same stop sent twice, not a demand to end at once: GNU
#: ``timeout`` sends its signal to the process and then to the process's group, so the process gets two at once
REPEAT_WINDOW_S = 1.0


def stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    """The command's SIGTERM handler: raises :class:`Terminated`. A second one while it unwinds ends the process, as
    the system's default does, unless it came within :data:`REPEAT_WINDOW_S` of the first (the same stop, sent twice)
    or is a stop kept from a finalizer and sent again (:func:`keeping_stops`), which raises as the first did.

    Example:
        >>> signal.signal(signal.SIGTERM, stop_on_sigterm) is not None
        True
        >>> try:
        ...     stop_on_sigterm(signal.SIGTERM, None)
        ... except Terminated:
        ...     signal.getsignal(signal.SIGTERM).__name__  # (a repeat at once is let pass)
        'ending_on_a_later_sigterm'
        >>> _ = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    """
    first = time.monotonic()

    def ending_on_a_later_sigterm(signum: int, frame: object) -> None:
        if _kept and _kept[1]:  # (a stop kept from a finalizer and sent again: raised, never taken for a repeat)
            stop_on_sigterm(signum, frame)
        if time.monotonic() - first >= REPEAT_WINDOW_S:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, ending_on_a_later_sigterm)
    raise Terminated


def caused_by_sigterm(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised while handling is :class:`Terminated` (a run's
    :class:`~metaspike.app.runs.Interrupted` replaces the signal's exception with where and how to continue).

    Example:
        >>> try:
        ...     try:
        ...         raise Terminated
        ...     except Terminated:
        ...         raise KeyboardInterrupt("kept in runs/a")
        ... except KeyboardInterrupt as stop:
        ...     caused_by_sigterm(stop)
        True
    """
    while err is not None:
        if isinstance(err, Terminated):
            return True
        err = err.__context__
    return False


_lock = threading.Lock()
_kept: list[Any] = []  # ([the stop, whether it was sent again]: at most one)


def keeping_stops(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that keeps a Ctrl-C or SIGTERM raised inside a finalizer and sends it again from a
    thread; every other exception goes to ``previous``.

    Example:
        >>> import sys
        >>> callable(keeping_stops(sys.unraisablehook))
        True
    """
    def hook(unraisable: Any) -> None:
        stop = unraisable.exc_value
        if not isinstance(stop, KeyboardInterrupt):
            previous(unraisable)
            return
        if isinstance(stop, Terminated):
            signal.signal(signal.SIGTERM, stop_on_sigterm)
        with _lock:
            _kept[:] = [stop, False]
        _thread.start_new_thread(_send_again, ())  # (sent from here, the handler ran at once, inside this hook)
    return hook


def _send_again() -> None:
    """Send the kept stop to the main thread, where its handler is still Python's (not at the command's end)."""
    with _lock:
        if not _kept or _kept[1]:
            return
        number = signal.SIGTERM if isinstance(_kept[0], Terminated) else signal.SIGINT
        if not callable(signal.getsignal(number)):  # (the command has ended: its end raises it)
            return
        _kept[1] = True
        _thread.interrupt_main(number)


@contextmanager
def handling_stops() -> Iterator[None]:
    """Inside the block, in a process of one's own (a command, a benchmark script): SIGTERM raises
    :class:`Terminated` as Ctrl-C raises ``KeyboardInterrupt``, and a stop raised inside a finalizer is kept
    (:func:`keeping_stops`); the caller ends its work with :func:`raise_kept_stop`, inside its handlers, and calls
    :func:`forget_kept_stop` in them. After the block SIGTERM ends the process as the system's default does (one sent
    while the interpreter shuts down ends it quietly).

    Example:
        >>> with handling_stops():
        ...     signal.getsignal(signal.SIGTERM) is stop_on_sigterm
        True
    """
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    unraisable = sys.unraisablehook
    sys.unraisablehook = keeping_stops(unraisable)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.unraisablehook = unraisable


def raise_kept_stop() -> None:
    """Raise here a stop kept from a finalizer: the one kept, or, where it was sent again and is on its way, the one
    its handler raises now. Nothing where none is kept.

    Example:
        >>> raise_kept_stop()  # (none kept)
    """
    with _lock:
        if not _kept:
            return
        stop, sent = _kept
        _kept.clear()
    if not sent:
        raise stop
    for _ in range(100):  # (Python runs a pending handler at a loop's turn: it raises here, if it has not yet)
        pass


def forget_kept_stop() -> None:
    """Forget a kept stop: called where a stop is handled, which it would repeat."""
    with _lock:
        _kept.clear()
