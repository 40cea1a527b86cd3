"""Stops (Ctrl-C, SIGTERM) of a process of one's own that must not be lost.

Python runs a signal's handler wherever the main thread is. Where that is a finalizer (a weak reference's callback, a
``__del__``: matplotlib's, while figures are drawn) the exception it raises is only printed ("Exception ignored in
..."); where it is Python code that native code calls and whose exceptions it drops (a guard of ``torch.compile``,
run before each compiled step) it vanishes without a word. Either way the work went on and the process ended with
status 0. Inside :func:`handling_stops` every stop raised is remembered until a handler takes it
(:func:`forget_kept_stop`): one raised in a finalizer is sent again from a thread (at once, mostly), and
:func:`raise_kept_stop`, called between training steps (:func:`metaspike.training.train_epoch`) and where a stop
would be named (the end of a run's guard, the end of a command), raises one that never reached a handler.
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

__all__ = ["Terminated", "stop_on_sigterm", "stop_on_sigint", "caused_by_sigterm", "handling_stops", "keeping_stops",
           "stops_so_far", "raise_kept_stop", "forget_kept_stop"]


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

# What is known of the one stop remembered: raised by a handler and not yet taken by one (a finalizer or native code
# may have swallowed it), kept from a finalizer and not yet sent again, or sent again and not yet raised
RAISED, KEPT, SENT = "raised", "kept", "sent"

# (re-entrant: a signal's handler takes it, and may run on the thread that holds it, inside forget_kept_stop)
_lock = threading.RLock()
_kept: list[Any] = []  # ([the stop, RAISED, KEPT or SENT, its number in stops_so_far]: at most one)
_handling = False  # (inside handling_stops: only there is a raised stop remembered)
_remembered = 0  # (the stops remembered so far in this process)


def _remember(stop: KeyboardInterrupt, state: str) -> KeyboardInterrupt:
    """``stop``, remembered in ``state`` until a handler takes it (only inside :func:`handling_stops`)."""
    global _remembered
    if _handling:
        with _lock:
            _remembered += 1
            _kept[:] = [stop, state, _remembered]
    return stop


def stops_so_far() -> int:
    """How many stops this process has remembered: a loop that passes it to :func:`raise_kept_stop` at its start is
    stopped by those that came later only (one that a handler of the caller's own took before is not raised again).

    Example:
        >>> isinstance(stops_so_far(), int)
        True
    """
    return _remembered


def stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    """The SIGTERM handler inside :func:`handling_stops`: raises :class:`Terminated`. A second one while it unwinds
    ends the process, as the system's default does, unless it came within :data:`REPEAT_WINDOW_S` of the first (the
    same stop, sent twice) or is a stop kept from a finalizer and sent again (:func:`keeping_stops`), which raises as
    the first did.

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
        if _kept and _kept[1] == SENT:  # (a stop kept from a finalizer and sent again: raised, never taken for a repeat)
            stop_on_sigterm(signum, frame)
        if time.monotonic() - first >= REPEAT_WINDOW_S:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, ending_on_a_later_sigterm)
    raise _remember(Terminated(), RAISED)


def stop_on_sigint(signum: int, frame: object) -> NoReturn:
    """The Ctrl-C (SIGINT) handler inside :func:`handling_stops`: raises ``KeyboardInterrupt``, as Python's own does,
    and remembers it until a handler takes it.

    Example:
        >>> try:
        ...     stop_on_sigint(signal.SIGINT, None)
        ... except KeyboardInterrupt as stop:
        ...     type(stop).__name__
        'KeyboardInterrupt'
    """
    raise _remember(KeyboardInterrupt(), RAISED)


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
        _remember(stop, KEPT)
        _thread.start_new_thread(_send_again, ())  # (sent from here, the handler ran at once, inside this hook)
    return hook


def _send_again() -> None:
    """Send the kept stop to the main thread, where its handler is still the one :func:`handling_stops` installed (not
    at the command's end)."""
    with _lock:
        if not _kept or _kept[1] != KEPT:
            return
        number = signal.SIGTERM if isinstance(_kept[0], Terminated) else signal.SIGINT
        if signal.getsignal(number) not in (stop_on_sigterm, stop_on_sigint):  # (the block has ended: its end raises it)
            return
        _kept[1] = SENT
        _thread.interrupt_main(number)


@contextmanager
def handling_stops() -> Iterator[None]:
    """Inside the block, in a process of one's own (a command, a benchmark script): SIGTERM raises
    :class:`Terminated` as Ctrl-C raises ``KeyboardInterrupt``, and every stop raised is remembered until a handler
    takes it (Ctrl-C where Python's own handler had it: one ignored stays ignored); the caller ends its work with
    :func:`raise_kept_stop`, inside its handlers, and calls :func:`forget_kept_stop` in them (a training step raises
    only the stops that came during its epoch, so one a handler of the caller's own took earlier stops nothing later;
    none outlives the block). After the block SIGTERM ends the process as the system's default does (one sent while
    the interpreter shuts down ends it quietly) and Ctrl-C has the handler it had before.

    Example:
        >>> with handling_stops():
        ...     signal.getsignal(signal.SIGTERM) is stop_on_sigterm
        True
    """
    global _handling
    python_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if python_sigint:  # (one ignored, as in a process started in the background, or a caller's own, stays)
        signal.signal(signal.SIGINT, stop_on_sigint)
    unraisable = sys.unraisablehook
    sys.unraisablehook = keeping_stops(unraisable)
    _handling = True
    try:
        yield
    finally:  # (a stop that left the block is its caller's: none is raised again outside it)
        _handling = False
        forget_kept_stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if python_sigint:  # (only the handler it replaced: one set outside Python reads as None, which cannot be set)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = unraisable


def raise_kept_stop(since: int = 0) -> None:
    """Raise here a stop that no handler took: one kept from a finalizer, one sent again and on its way (its handler
    raises it now), or one raised where native code dropped it; only one remembered after the first ``since``
    (:func:`stops_so_far`). Nothing where none is remembered, or outside the main thread (where no signal lands).

    Example:
        >>> raise_kept_stop()  # (none remembered)
    """
    if not _kept or threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if not _kept or _kept[2] <= since:
            return
        stop, state, number = _kept
        if state != SENT:  # (in the same hold of the lock: a kept stop is then never sent as well)
            _kept[1] = RAISED
    if state == SENT:
        for _ in range(100):  # (Python runs a pending handler at a loop's turn: it raises here, if it has not yet)
            pass
        with _lock:
            _kept[:] = [stop, RAISED, number]
    raise stop.with_traceback(None)


def forget_kept_stop() -> None:
    """Forget the stop remembered: called where a stop is handled, which it would repeat.

    Example:
        >>> forget_kept_stop()
        >>> raise_kept_stop()  # (none remembered)
    """
    with _lock:
        _kept.clear()
