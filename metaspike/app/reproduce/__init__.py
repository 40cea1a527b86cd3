"""Reproductions of the paper's experiments (Laborieux et al. 2021) at CPU or paper scale.

``metaspike reproduce NAME [--scale cpu|paper] [--seeds ...] [--out DIR]`` calls :func:`reproduce`, and
``metaspike reproduce --resume DIR`` :func:`resume_reproduction`;
see :mod:`metaspike.app.reproduce.experiments` for the settings and REPRODUCTION.md for the results.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspike.app.reproduce.experiments import EXPERIMENTS, get_experiment
from metaspike.app.reproduce.scales import SCALES
from metaspike.app.runs import LOCK, REPRODUCTION_RECORD, Interrupted, continued_by, ran_with, resume_folder, run_lock
from metaspike.checks import MAX_SEED, check_device, unknown_name
from metaspike.continual.results import unique_directory
from metaspike.data import OFFLINE_DATASETS
from metaspike.files import atomic_write_text, expanded_path, read_json

__all__ = ["reproduce", "resume_reproduction", "EXPERIMENTS", "SCALES"]


#: The file in a reproduction's folder that records what it runs (experiment, scale, seeds, data folder), so that
#: ``metaspike reproduce --resume DIR`` finishes it.
RECORD = REPRODUCTION_RECORD


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if (not isinstance(seeds, (list, tuple)) or not seeds or
            not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ValueError(f"--seeds must list one or more distinct integers in 0..{MAX_SEED}, got {seeds}")
    return list(seeds)


def _check_data_dir(scale: str, data_dir: object, name: str) -> None:
    """One ``ValueError`` naming ``name`` (``--data-dir``, a record's ``data_dir``) where a folder is given to a scale
    that reads none: ``cpu`` trains on the datasets that come with the installed packages."""
    if scale == "cpu" and data_dir is not None:
        raise ValueError(f"{name}: --scale cpu runs on the datasets that come with the installed packages "
                         f"({', '.join(OFFLINE_DATASETS)}) and reads no data folder; leave out {name}, or give "
                         "--scale paper")


def reproduce(name: str, scale: str = "cpu", seeds: Sequence[int] = (1,), out: str | Path = "runs",
              progress: bool = False, data_dir: str | None = None,
              device: str = "cpu") -> tuple[Path, list[dict[str, Any]]]:
    """Run experiment ``name`` at ``scale`` with each seed; return ``(results folder, table rows)``.

    The folder ``out/reproduce-NAME-SCALE`` (``-2``... if taken) gets ``table.csv`` (the paper's
    number beside ours), a figure and, for training experiments, one run directory per run.
    ``data_dir`` is where the full datasets of ``scale="paper"`` are read from (see
    :func:`metaspike.data.default_data_dir`). ``device`` trains the runs there (``"cpu"``, ``"cuda"``, ...; ``fig5ab``'s
    quadratic task runs on the CPU). A stopped reproduction is finished by :func:`resume_reproduction`, on the device
    it started on.

    Example:
        >>> root, rows = reproduce("fig5ab", seeds=[1, 2, 3], out="runs")  # doctest: +SKIP
        >>> [row["setting"] for row in rows]  # doctest: +SKIP
        ['m=0', 'm=0.5', 'm=1', 'm=1.35']
    """
    get_experiment(name)
    if scale not in SCALES:
        raise ValueError(unknown_name("scale", scale, SCALES))
    _check_data_dir(scale, data_dir, "--data-dir")
    seeds = _check_seeds([int(s) for s in seeds])
    device = str(check_device(device, "--device"))
    root = unique_directory(out, folder_name(name, scale))
    # (the folder resolved: a resume may run elsewhere)
    folder = None if data_dir is None else str(expanded_path(data_dir, "--data-dir").resolve())
    atomic_write_text(root / RECORD, json.dumps({"name": name, "scale": scale, "seeds": seeds, "data_dir": folder,
                                                 "device": device}, indent=2) + "\n")
    try:
        return _run(root, name, scale, seeds, progress, folder, device)
    except BaseException as err:
        if _remove_empty(root) and isinstance(err, Interrupted):  # (nothing left to continue)
            raise KeyboardInterrupt from None
        raise


def resume_reproduction(root: str | Path, progress: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Finish a stopped reproduction in its folder: runs that finished are read back, the one stopped continues
    from its checkpoint, the missing ones start; then its table and figure are written. (``fig5ab`` and
    ``fig5cde`` keep no run folders: they run again, in seconds.)

    Example:
        >>> resume_reproduction("runs/reproduce-table1-cpu")  # doctest: +SKIP
    """
    root = resume_folder(root, RECORD)
    record = read_json(root / RECORD)
    if (not isinstance(record, dict)
            or set(record) - {RAN_WITH, "device", COMPLETE} != {"name", "scale", "seeds", "data_dir"}):
        raise ValueError(f"{root / RECORD} must hold name, scale, seeds, data_dir and device")
    device = record.get("device", "cpu")  # (written since reproductions take --device; the CPU before)
    try:
        get_experiment(record["name"])
        if record["scale"] not in SCALES:
            raise ValueError(f"unknown scale {record['scale']!r}; available: {', '.join(SCALES)}")
        seeds = _check_seeds(record["seeds"])
        if record["data_dir"] is not None and not isinstance(record["data_dir"], str):
            raise ValueError(f"data_dir must be a folder name or null, got {record['data_dir']!r}")
        _check_data_dir(record["scale"], record["data_dir"], "data_dir")
        if not isinstance(device, str):
            raise ValueError(f"device must name a torch device, got {device!r}")
        check_device(device)
        if not isinstance(record.get(COMPLETE, False), bool) or not isinstance(record.get(RAN_WITH, {}), dict):
            raise ValueError(f"{COMPLETE} must be true or false and {RAN_WITH} a record of the runs' arithmetic")
        _check_folder_is_of(root, record["name"], record["scale"])
    except ValueError as err:
        raise ValueError(f"{root / RECORD}: {err}") from None
    return _run(root, record["name"], record["scale"], seeds, progress, record["data_dir"], device)


def folder_name(name: str, scale: str) -> str:
    """The name of the folder a reproduction of experiment ``name`` at ``scale`` makes (``-2``, ... after it where the
    name is taken).

    Example:
        >>> folder_name("fig5ab", "cpu")
        'reproduce-fig5ab-cpu'
    """
    return f"reproduce-{name}-{scale}"


def _check_folder_is_of(root: Path, name: str, scale: str) -> None:
    """A ``ValueError`` where ``root``'s name is that of a reproduction of another experiment or scale than its
    record says (a record edited or copied from another folder would write that experiment's table over this one's);
    a folder renamed to anything else is taken as it is."""
    folder = root.resolve().name  # (resolved: "." or a link named otherwise stands for the folder itself)
    made_as = next(((other, other_scale) for other in EXPERIMENTS for other_scale in SCALES
                    if re.fullmatch(re.escape(folder_name(other, other_scale)) + r"(-\d+)?", folder)), None)
    if made_as is not None and made_as != (name, scale):
        raise ValueError(f"it names experiment {name!r} at scale {scale!r}, but the folder was made for "
                         f"{made_as[0]!r} at {made_as[1]!r} (its name), whose results a pass of {name!r} would write "
                         "over; put the record's name and scale back")


def _run(root: Path, name: str, scale: str, seeds: list[int], progress: bool,
         data_dir: str | None, device: str) -> tuple[Path, list[dict[str, Any]]]:
    with continued_by(root, f"metaspike reproduce --resume {root}"):  # (the reproduction continues, not its run)
        with run_lock(root):  # a second pass over the same folder meanwhile is one line, not a second writer
            _record_unfinished(root)
            rows = get_experiment(name).run(scale, seeds, root, progress, data_dir, device)
            _record_finish(root)
            return root, rows


RAN_WITH = "ran_with"
"""The key of :data:`RECORD` under which a finished pass records the arithmetic of its runs and of itself."""

COMPLETE = "complete"
"""The key of :data:`RECORD` that says whether every run is in its tables: ``false`` from the start of each pass (a
stopped reproduction's ``table.csv`` holds the rows measured so far), ``true`` once a pass has finished them."""


def _update_record(root: Path, **fields: Any) -> None:
    """Set ``fields`` in the reproduction's :data:`RECORD`, keeping the others."""
    atomic_write_text(root / RECORD, json.dumps({**read_json(root / RECORD), **fields}, indent=2) + "\n")


def _record_unfinished(root: Path) -> None:
    """Record in :data:`RECORD` that the reproduction is not complete, as each pass starts: a pass rewrites its tables
    row by row (a pass over a complete reproduction stopped midway left it marked complete over a partial table)."""
    _update_record(root, **{COMPLETE: False})


def _record_finish(root: Path) -> None:
    """Record in :data:`RECORD` that the reproduction is complete, and what arithmetic its runs (every run folder
    under ``root``) and this pass ran with (:func:`metaspike.app.runs.ran_with`); warn where they differ: its tables
    hold their numbers."""
    arithmetic, mixed = ran_with(sorted(path.parent for path in root.rglob("config.json")))
    if mixed:
        print(f"metaspike: warning: {mixed}", file=sys.stderr)
    _update_record(root, **{RAN_WITH: arithmetic, COMPLETE: True})


def _remove_empty(root: Path) -> bool:
    """Remove ``root`` where it holds nothing measured (empty folders, its record and lock only); whether it did."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if {p.name for p in root.iterdir()} <= {RECORD, LOCK}:
        shutil.rmtree(root)
        return True
    return False
