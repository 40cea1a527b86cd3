"""Pieces the benchmark scripts share: where results go, the CPU's description, the line that heads every
benchmark's output, and argparse types that accept only a flag's range.

Results go by default to ``benchmarks/results/runs/`` (ignored by git); only an explicit ``--out`` (or ``--csv``)
writes into the committed ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from metaspike.app.config import parse_meta
from metaspike.checks import MAX_SEED
from metaspike.data import DataError
from metaspike.files import expanded_path
from metaspike.machine import FLAGS, cpu  # noqa: F401 (FLAGS: the benchmarks' import of it)
from metaspike.stops import caused_by_sigterm, forget_kept_stop, handling_stops, raise_kept_stop

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
#: The default folder of every benchmark's output (git-ignored): published figures are written with ``--out``.
RUNS = RESULTS / "runs"


def machine_fields() -> dict[str, object]:
    """The CPU (model with family and model numbers), its kind, torch's version and threads, as the columns
    ``cpu``, ``cpu_kind``, ``torch`` and ``threads`` of a benchmark's CSV. Call it after ``torch.set_num_threads``."""
    described, kind, _ = cpu()
    return {"cpu": described, "cpu_kind": kind, "torch": torch.__version__, "threads": torch.get_num_threads()}


def machine() -> str:
    """The line that heads every benchmark's output: :func:`machine_fields` in words, e.g. ``CPU: AMD EPYC 9R45
    (family 26, model 2), kind amd-epyc-avx512-family26, 2 logical CPUs; torch 2.13.0, 1 thread``."""
    on = machine_fields()
    return (f"CPU: {on['cpu']}, kind {on['cpu_kind']}, {os.cpu_count()} logical CPUs; torch {on['torch']}, "
            f"{on['threads']} thread{'' if on['threads'] == 1 else 's'}")


def flags_line(flags: list[str]) -> str:
    """The line that lists which of the relevant CPU flags (:data:`FLAGS`) the machine has, e.g.
    ``flags: avx2 yes, avx512f yes, ..., amx_tile no``."""
    return "flags: " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS)


def load_average_line(when: str) -> str:
    """The system's load averages over 1, 5 and 15 minutes, ``when`` taken (``"before"``, ``"after"``): a busy machine
    shows in them."""
    return f"load average {when}: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"


def run_file(name: str, kind: str) -> Path:
    """The default results file of benchmark ``name`` on a machine of ``kind`` at torch's thread count, in the
    git-ignored :data:`RUNS`, e.g. ``runs/inference_amd-epyc-avx2-family23_1thread.txt``."""
    threads = torch.get_num_threads()
    return RUNS / f"{name}_{kind}_{threads}thread{'' if threads == 1 else 's'}.txt"


def _argument_type(convert: Callable[[str], T], accepted: Callable[[T], bool], wording: str) -> Callable[[str], T]:
    """An argparse type: ``convert(text)`` where ``accepted`` takes it, else one error saying it ``must be`` of the
    ``wording`` (argparse names the flag in front of it)."""
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text!r}") from None
        if not accepted(value):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text!r}")
        return value
    return parse


#: An integer >= 1.
positive_int = _argument_type(int, lambda value: value >= 1, "an integer >= 1")
#: A finite number >= 0.
nonnegative_float = _argument_type(float, lambda value: 0 <= value < math.inf, "a finite number >= 0")
#: A finite number > 0 (a learning rate).
positive_float = _argument_type(float, lambda value: 0 < value < math.inf, "a finite number > 0")
#: A seed: an integer in ``0..MAX_SEED``.
seed_int = _argument_type(int, lambda value: 0 <= value <= MAX_SEED, f"an integer in 0..{MAX_SEED}")


def meta_setting(text: str) -> tuple[float, ...]:
    """An argparse type: one m setting, a number >= 0 or one per layer joined by ``,`` (``5,30,30``)."""
    try:
        return parse_meta(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or one per layer like 5,30,30, got {text!r}") from None


def check_distinct(parser: argparse.ArgumentParser, flag: str, values: Sequence[object]) -> None:
    """One argparse error where ``values`` (of ``flag``) name one value twice: a seed run twice is one run counted
    twice (its spread then reads 0)."""
    twice = next((value for i, value in enumerate(values) if value in values[:i]), None)
    if twice is not None:
        parser.error(f"argument {flag}: {twice} is given twice; give each once")


def _writable_folder(folder: Path, what: str) -> None:
    """Raise ``ArgumentTypeError`` naming ``what`` where nothing can be written in ``folder``, tried in it or, where it
    does not exist yet, in its nearest folder that does, without leaving anything there: a benchmark checks where it
    writes before it measures, not after."""
    existing = next(path for path in (folder.absolute(), *folder.absolute().parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {what} {folder}: {err.strerror or err}") from None


def output_file(text: str) -> Path:
    """An argparse type: a file a benchmark writes at its end, checked now (not a folder, its folder writable)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file (e.g. {path / 'results.txt'})")
    _writable_folder(path.parent, "in the folder")
    return path


def output_folder(text: str) -> Path:
    """An argparse type: a folder a benchmark writes into (``~`` expanded), made and checked now (not a file)."""
    try:
        path = expanded_path(text, "the folder")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; name a folder")
    _writable_folder(path, "in the folder")
    return path


def made_or_exit(parser: argparse.ArgumentParser, make: Callable[[], T]) -> T:
    """``make()`` (a benchmark's run settings, built before anything runs), its ``ValueError`` or ``DataError`` one
    argparse error (the settings' checks name the flag)."""
    try:
        return make()
    except (ValueError, DataError) as err:
        parser.error(str(err))


def run_benchmark(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``: a Ctrl-C or SIGTERM, even one landing in a finalizer (matplotlib's, while figures
    are drawn), ends it with one line (what the stop carries as its message added: how to go on) and status 130 or 143,
    not Python's traceback; what it wrote before stays where it was.

    It changes the process's signal handlers for good (SIGINT and SIGTERM end it quietly after ``main``): a script's
    own process only.

    Example:
        >>> if __name__ == "__main__":  # doctest: +SKIP
        ...     run_benchmark(main)
    """
    try:
        with handling_stops():
            try:
                main()
                raise_kept_stop()
            except KeyboardInterrupt as stop:
                forget_kept_stop()
                terminated = caused_by_sigterm(stop)
                how = f"; {stop.args[0]}" if stop.args else ""
                stopped = "terminated" if terminated else "interrupted"
                print(f"{Path(sys.argv[0]).name}: {stopped}{how}", file=sys.stderr)
                sys.exit(128 + signal.SIGTERM if terminated else 130)
    finally:  # (a Ctrl-C while the interpreter shuts down ends it quietly, as a SIGTERM then does)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
