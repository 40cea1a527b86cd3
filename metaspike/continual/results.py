"""Run directories: every result file written atomically as soon as it is known.

A run directory holds ``config.json`` (everything needed to rerun it), ``scenario.json`` (the exact
task definitions: permutations, class groups, subsets), ``accuracy_matrix.csv`` (a row per evaluation, after
training task ``after_task``; column j: test accuracy on task j, percent), ``curves.csv`` (one row per epoch),
``metrics.json`` (ACC, BWT, FWT, forgetting, layers ranked by plasticity), ``hidden_weights.json``
(histograms per layer after each task), ``diagnostics.csv`` (per epoch and layer: sign-flip rate and
fraction of consolidated synapses) and, while the run goes on, ``checkpoint.pt`` (and the one before, ``checkpoint.prev.pt``)
to resume it from. Files are replaced atomically (temporary file, then rename), so a run that dies leaves
the last complete version of each, and a new run never writes into an existing directory.

A checkpoint also stores a SHA-256 of all its content, tensors and plain values (:func:`state_checksum`), so bytes changed
on disk are caught when it is loaded, not only a damaged zip or pickle. :func:`load_run` checks every
file it reads and names the file in its one-line ``ValueError`` when one is malformed.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metaspike.checks import listed
from metaspike.continual.checkpoints import (
    CHECKPOINT_FORMAT,
    CURVE_COLUMNS,
    MAX_AFTER_TASK,
    MAX_GLOBAL_EPOCH,
    LoadedCheckpoint,
    check_histograms,
    check_loadable,
)
from metaspike.continual.memo import PartMemo
from metaspike.continual.metrics import evaluated_rows, is_accuracy
from metaspike.continual.trainer import ContinualResult
from metaspike.diagnostics import plasticity_ranking
from metaspike.files import (
    JSON_MAX_BYTES,
    as_path,
    atomic_open,
    atomic_write_text,
    check_plain_tensors,
    csv_text,
    expanded_path,
    load_torch_file,
    read_json,
    read_regular_file,
)

__all__ = [
    "ACCURACY_DECIMALS", "METRIC_DECIMALS", "RunDirectory", "load_run", "load_checkpoint", "latest_good_checkpoint",
    "unique_directory", "state_checksum",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: The decimals a run directory writes: the accuracies of its matrix and its final and untrained accuracies
#: (:meth:`RunDirectory.write_matrix`, :meth:`RunDirectory.write_metrics`) to two, its metrics to three.
ACCURACY_DECIMALS, METRIC_DECIMALS = 2, 3
CHECKSUM_KEY = "state_sha256"  # beside the trainer's state in a checkpoint file
CONFIG_KEY = "config_sha256"  # the run's config.json when the run started, beside the trainer's state
#: The most checksum text a run directory keeps of the parts its last checkpoint held (about 40 bytes a value: a
#: 10-million-cell matrix would keep 400 MB), so that the next checkpoint sums the new parts only; parts past it are
#: summed again at every checkpoint.
CHECKSUM_MEMO_BYTES = 64 << 20


class ConfigChanged(ValueError):
    """A checkpoint that was written under another ``config.json`` than the run directory holds now."""


def _file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or ``None`` where there is no file."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _json_ready(value: Any) -> Any:
    if not isinstance(value, (str, bytes)) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # (a numpy scalar or a 0-d tensor: its number)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _as_written(value: Any) -> Any:
    """``value`` as :meth:`RunDirectory.write_json` writes it and :func:`~metaspike.files.read_json` reads it back
    (tuples as lists, non-finite floats as ``None``), to compare with a file's contents."""
    return json.loads(json.dumps(_json_ready(value)))


def _cell(value: Any) -> Any:
    """A CSV cell: floats rounded to 6 places, non-finite ones left empty (read back as NaN)."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else ""
    return value


def _matrix_cells(index: int, row: Sequence[float]) -> list[Any]:
    """The cells of ``accuracy_matrix.csv``'s line of matrix row ``index`` (0-based): the task number, then its
    accuracies to 2 decimals."""
    return [index + 1] + [_cell(round(a, ACCURACY_DECIMALS)) for a in row]


def _csv_cells(row: dict[str, Any], header: Sequence[str]) -> list[Any]:
    """The cells of a curves or diagnostics ``row`` under ``header``: empty where it has no value."""
    return [_cell(row[k]) if k in row else "" for k in header]


def state_checksum(state: Any, memo: PartMemo | None = None) -> str:
    """SHA-256 (hex) over everything in a nested dict/list structure: each tensor's key path, dtype, shape and bytes,
    and each plain value's key path, type and exact text (a float's ``repr`` holds all its bits).

    Dict keys are visited in sorted order, so the digest depends only on the content. A list, tuple or dict met again
    (the one all-NaN row that stands for every task of a long stream trained without an evaluation) adds its key path
    and the one where it was first met, not its content again, so the digest costs time for the distinct content, not
    for (tasks trained) x (tasks) (``torch.save`` keeps such an object one, and ``torch.load`` gives it back shared).
    (Checkpoints of format ``metaspike-checkpoint-2`` summed a repeated object in full each time: they are refused by
    their format.)

    With a ``memo`` (:class:`~metaspike.continual.memo.PartMemo`, one per run directory, given every checkpoint) an
    item of a list or tuple that is a plain part (no tensor) and was summed by the last call, at the same key path and
    unchanged since, adds the bytes it added then instead of being walked again: the same digest, with the Python work
    of the new parts only (a long run's histogram snapshots and matrix rows are appended, never changed).

    Example:
        >>> a = state_checksum({"w": torch.ones(2), "step": [torch.tensor(3)], "acc": [94.72]})
        >>> a == state_checksum({"acc": [94.72], "step": [torch.tensor(3)], "w": torch.ones(2)})
        True
        >>> a == state_checksum({"w": torch.ones(2), "step": [torch.tensor(3)], "acc": [126.72]})
        False
        >>> skipped = (float("nan"),) * 2
        >>> state_checksum([skipped, skipped]) == state_checksum([skipped, (float("nan"),) * 2])  # shared or not
        False
    """
    digest = hashlib.sha256()
    first_met: dict[int, str] = {}
    met: list[tuple[Any, str]] = []  # (each container in the order first met, with where: what a memo's part holds)
    captures: list[list[bytes] | None] = []  # (the bytes of the memo's parts being summed, outermost first; None:
    # a part that holds a tensor, which may change in place unseen: summed every time, its bytes not kept)
    repeats = [0]  # (how many "same as" marks so far: a part holding one depends on what was met before it)

    def add(data: bytes | memoryview) -> None:
        digest.update(data)
        for capture in captures:
            if capture is not None:
                capture.append(data)

    def walk(value: Any, where: str) -> None:
        if isinstance(value, (dict, list, tuple)):
            if id(value) in first_met:
                repeats[0] += 1
                add(f"{where}|same as {first_met[id(value)]}|".encode())
                return
            first_met[id(value)] = where
            met.append((value, where))
        if isinstance(value, torch.Tensor):
            captures[:] = [None] * len(captures)
            flat = value.detach().cpu().contiguous().reshape(-1)
            add(f"{where}|{flat.dtype}|{tuple(value.shape)}|".encode())
            add(memoryview(flat.view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                walk(value[key], f"{where}/{key!r}")
        elif isinstance(value, (list, tuple)):
            add(f"{where}|{type(value).__name__}|{len(value)}|".encode())
            for index, item in enumerate(value):
                item_where = f"{where}[{index}]"
                if memo is None or not isinstance(item, (dict, list, tuple)) or id(item) in first_met:
                    walk(item, item_where)
                else:
                    walk_part(item, item_where)
        else:
            add(f"{where}|{type(value).__name__}|{value!r}|".encode())

    def walk_part(part: Any, where: str) -> None:  # (an item of a list or tuple, met first: summed once, kept in memo)
        known = memo.get(part, where)
        if known is not None and first_met.keys().isdisjoint(known[2]):
            data, inner, registered = known
            first_met.update(registered)
            met.extend(inner)
            add(data)
            return
        start, repeats_before = len(met), repeats[0]
        captures.append([])
        try:
            walk(part, where)
        finally:
            chunks = captures.pop()
        if chunks is not None and repeats[0] == repeats_before:
            data, inner = b"".join(chunks), met[start:]
            memo.put(part, where, (data, inner, {id(value): at for value, at in inner}), len(data))

    walk(state, "")
    if memo is not None:
        memo.forget_unused()
    return digest.hexdigest()


def unique_directory(root: str | os.PathLike, name: str) -> Path:
    """Create and return ``root/name`` (``root/name-2``, ``-3`` ... when taken); never reuses one. A leading ``~``
    of ``root`` is the home folder (as ``--out=~/runs`` means, which the shell leaves unexpanded).

    Raises ``ValueError`` with the reason when ``root`` cannot be written.

    Example:
        >>> import tempfile
        >>> unique_directory(tempfile.mkdtemp(), "run").name
        'run'
    """
    root = expanded_path(root, "the results folder")
    if root.exists() and not root.is_dir():
        raise ValueError(f"cannot write results to {root}: it is a file, not a folder")
    if root.is_symlink() and not root.exists():
        raise ValueError(f"cannot write results to {root}: it is a symbolic link to {os.readlink(root)}, which does "
                         "not exist")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 10_000):
            path = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            return path
    except OSError as err:  # (naming the path that failed where it is another: a folder inside root, or a parent)
        where = f" ({err.filename})" if err.filename and Path(err.filename) != root else ""
        raise ValueError(f"cannot write results to {root}: {err.strerror or err}{where}") from None
    raise ValueError(f"too many runs named {name!r} in {root}")


class RunDirectory:
    """Writes a run's results into its own directory (see module docs for the files).

    Example:
        >>> import tempfile
        >>> run = RunDirectory.create(tempfile.mkdtemp(), "demo", config={"meta": 1.35})
        >>> (run.path / "config.json").exists()
        True
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config_digest = _file_digest(path / "config.json")  # what this process runs under, for checkpoints
        self._memos: dict[str, PartMemo] = {}  # per file: what was made of each result part it holds (see memo.py)

    def _memo(self, name: str) -> PartMemo:
        """The :class:`~metaspike.continual.memo.PartMemo` of the file ``name`` (made at its first write; a
        checkpoint's keeps at most :data:`CHECKSUM_MEMO_BYTES` of checksum text)."""
        if name not in self._memos:
            self._memos[name] = PartMemo(CHECKSUM_MEMO_BYTES if name == CHECKPOINT else None)
        return self._memos[name]

    @classmethod
    def create(cls, root: str | os.PathLike, name: str, config: dict[str, Any], scenario: dict[str, Any] | None = None) -> "RunDirectory":
        """Make a new run directory under ``root`` and write its config (and scenario definition); a name that is not
        one folder name, or a config that JSON cannot hold, is refused before anything is made."""
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name
                or "\0" in name):
            raise ValueError(f"a run's name must be one folder name (no '/', no NUL character), got {name!r}")
        for what, data in (("config", config), ("scenario", scenario)):
            if not (isinstance(data, dict) or (what == "scenario" and data is None)):  # (load_run reads an object)
                raise ValueError(f"the run's {what} must be a dict of settings, got {type(data).__name__}")
            try:
                json.dumps(_json_ready(data))
            except (TypeError, ValueError) as err:
                raise ValueError(f"the run's {what} cannot be written as JSON: {err}") from None
        run = cls(unique_directory(root, name))
        run.describe(config, scenario)
        return run

    def describe(self, config: dict[str, Any], scenario: dict[str, Any] | None = None) -> None:
        """Write the run's config (and scenario definition), which later checkpoints are tied to: when a run is
        made, and again when one stopped before its first checkpoint starts over under an edited config."""
        self.config_digest = _file_digest(self.write_json("config.json", config))
        if scenario is not None:
            self.write_json("scenario.json", scenario)

    def holds(self, config: dict[str, Any], ignoring: Sequence[str] = (), absent: dict[str, Any] | None = None) -> bool:
        """Whether the folder's ``config.json`` records ``config`` (as :meth:`create` writes it), leaving out the
        keys ``ignoring`` on both sides (what describes the machine, not the run); a key of ``absent`` that the file
        lacks counts as that value (a setting added since the file was written, at the value runs had before).

        Example:
            >>> import tempfile
            >>> run = RunDirectory.create(tempfile.mkdtemp(), "demo", {"hidden": (64,), "threads": 2})
            >>> run.holds({"hidden": (64,)}, ignoring=["threads"]), run.holds({"hidden": (32,)}, ignoring=["threads"])
            (True, False)
            >>> run.holds({"hidden": (64,), "baseline": None}, ["threads"], absent={"baseline": None})
            True
        """
        stored = read_json(self.path / "config.json")
        if not isinstance(stored, dict):
            return False
        stored = {**_as_written(absent or {}), **stored}
        wanted = _as_written(config)
        return ({k: v for k, v in stored.items() if k not in ignoring} ==
                {k: v for k, v in wanted.items() if k not in ignoring})

    def check_scenario(self, scenario: dict[str, Any]) -> None:
        """Refuse a ``scenario.json`` that does not record ``scenario``, the tasks the run's config defines (edited, or
        copied from another run: the folder would describe tasks it did not train on); write it where it is missing.

        Example:
            >>> import tempfile
            >>> run = RunDirectory.create(tempfile.mkdtemp(), "demo", {}, {"seed": 1})
            >>> run.check_scenario({"seed": 2})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: .../scenario.json records other tasks than its config.json defines ...
        """
        path = self.path / "scenario.json"
        if not path.exists():
            self.write_json(path.name, scenario)
        elif read_json(path) != _as_written(scenario):
            raise ValueError(f"{path} records other tasks than its config.json defines (edited, or copied from another "
                             "run); delete it, and --resume writes it again from config.json")

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to the file ``name`` of the run directory, atomically."""
        path = self.path / name
        atomic_write_text(path, json.dumps(_json_ready(data), indent=2) + "\n")
        return path

    def _write_json_list(self, name: str, items: Sequence[Any]) -> None:
        """Write ``items`` as :meth:`write_json` does (the same text), atomically; an item unchanged since the last
        write of ``name`` keeps its text (a long run's histogram snapshots are encoded once, not at every task)."""
        memo = self._memo(name)
        texts = []
        for item in items:
            text = memo.get(item, None)
            if text is None:  # (the list's indentation: each of the item's lines 2 spaces further in)
                text = json.dumps(_json_ready(item), indent=2).replace("\n", "\n  ")
                memo.put(item, None, text)
            texts.append(text)
        memo.forget_unused()
        atomic_write_text(self.path / name, ("[\n  " + ",\n  ".join(texts) + "\n]" if texts else "[]") + "\n")

    def _write_csv(self, name: str, header: Sequence[str],
                   rows: Sequence[tuple[Any, Any, Callable[[], list[Any]]]]) -> None:
        """Write ``header`` and ``rows`` as the CSV file ``name``, atomically. Each row is ``(part, key, cells)``: the
        result part it shows (a matrix row, a curves row), what else its line depends on (its task number) and a
        function that gives its cells; a part unchanged since the last write of ``name``, under the same header and
        key, keeps its line (a long run's rows are formatted once, not at every write)."""
        memo, columns = self._memo(name), tuple(header)
        lines = [csv_text([header])]
        for part, key, cells in rows:
            line = memo.get(part, (columns, key))
            if line is None:
                line = csv_text([cells()])
                memo.put(part, (columns, key), line)
            lines.append(line)
        memo.forget_unused()
        atomic_write_text(self.path / name, "".join(lines))

    def epoch_done(self, result: ContinualResult) -> None:
        """Rewrite ``curves.csv`` and ``diagnostics.csv`` (one row per epoch so far), atomically. The columns are every
        row's keys in the order met (a run resumed by a later version may measure other diagnostics), the curves' with
        every task's column after their own (a row holds the tasks evaluated then): a row without one has an empty
        cell there."""
        for name, rows in (("curves.csv", result.curves), ("diagnostics.csv", result.diagnostics)):
            if rows:
                first = [*CURVE_COLUMNS, *result.task_names] if name == "curves.csv" else []
                header = list(dict.fromkeys(itertools.chain(first, itertools.chain.from_iterable(rows))))
                self._write_csv(name, header, [(r, None, functools.partial(_csv_cells, r, header)) for r in rows])

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Save a trainer checkpoint as ``checkpoint.pt``; the previous one is kept as ``checkpoint.prev.pt``.

        The new file is complete on disk before it replaces anything, so a kill at any moment
        leaves at least one good checkpoint. The file also holds :func:`state_checksum` of ``state``,
        which :func:`load_checkpoint` verifies, and the SHA-256 of the run's ``config.json``, which
        :func:`latest_good_checkpoint` compares with the file then in the folder.
        """
        check_loadable(state, memo=self._memo(CHECKPOINT))  # before anything is replaced: a file torch will not
        # read back is no checkpoint (the parts the last checkpoint held, unchanged, were checked then)
        path = self.path / CHECKPOINT
        if path.exists():  # keep the newest good one: a hard link, so CHECKPOINT stays in place meanwhile
            previous = self.path / PREVIOUS_CHECKPOINT
            previous.unlink(missing_ok=True)
            try:
                os.link(path, previous)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, previous)
        with atomic_open(path, "wb") as handle:
            checksum = state_checksum(state, self._memo(CHECKPOINT))
            torch.save({**state, CHECKSUM_KEY: checksum, CONFIG_KEY: self.config_digest}, handle)

    def remove_checkpoints(self) -> None:
        """Delete the checkpoints of a finished run (its final weights are in ``model.pt``)."""
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            (self.path / name).unlink(missing_ok=True)

    def finish(self, result: ContinualResult) -> None:
        """Close a run that :meth:`ContinualTrainer.fit` ended: ``metrics.json`` says ``complete: true`` and the
        checkpoints go (write the final weights first if you want them: ``metaspike train`` writes ``model.pt``).

        Example:
            >>> log = RunDirectory.create("runs", "mine", {"lr": 0.01})  # doctest: +SKIP
            >>> log.finish(trainer.fit(scenario, log=log))  # doctest: +SKIP
        """
        self.write_metrics(result, complete=True)
        self.remove_checkpoints()

    def task_done(self, result: ContinualResult) -> None:
        """Write the accuracy matrix so far, histograms and metrics (marked incomplete)."""
        self.write_matrix(result)
        self._write_json_list("hidden_weights.json", result.histograms)
        self.write_metrics(result, complete=False)

    def write_matrix(self, result: ContinualResult) -> None:
        """One row per evaluation (``after_task`` says after which task); tasks trained without one have no row (their
        shared row is read once)."""
        rows = [(result.matrix[i], i, functools.partial(_matrix_cells, i, result.matrix[i]))
                for i in evaluated_rows(result.matrix)]
        self._write_csv("accuracy_matrix.csv", ["after_task", *result.task_names], rows)

    def write_metrics(self, result: ContinualResult, complete: bool = True) -> None:
        metrics = {k: round(v, METRIC_DECIMALS) if math.isfinite(v) else v for k, v in result.metrics.items()}
        if "evaluated_tasks" in metrics:
            metrics["evaluated_tasks"] = int(metrics["evaluated_tasks"])  # a count
        last_task = [{k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("flip_rate:")}
                     for row in result.diagnostics if row["task"] == len(result.matrix)]
        self.write_json(
            "metrics.json",
            {**metrics,
             "final_accuracy": [round(a, ACCURACY_DECIMALS) for a in result.matrix[-1]] if result.matrix else [],
             "evaluated_task_numbers": [j + 1 for j, a in enumerate(result.matrix[-1]) if math.isfinite(a)]
             if result.matrix else [],
             "untrained_accuracy": [round(a, ACCURACY_DECIMALS) for a in result.baseline],
             "tasks_trained": len(result.matrix), "seconds": round(result.seconds, 1),
             "layer_plasticity_last_task": [{"layer": layer, "mean_flip_rate": rate}
                                            for layer, rate in plasticity_ranking(last_task)],
             "complete": complete},
        )


def load_checkpoint(path: str | os.PathLike, config_digest: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint file with ``torch.load(..., weights_only=True)`` and verify its checksum.

    Raises one line of ``ValueError`` naming the file when it is missing, truncated, corrupt, of another version's
    format, holds tensors that are not plain dense ones or nests too deep (:func:`~metaspike.files.check_plain_tensors`,
    before anything is hashed or copied), or its content (tensors and plain values alike) does not match the checksum
    stored with it (or cannot be summed); with ``config_digest`` (the SHA-256 of the run's ``config.json`` now),
    :class:`ConfigChanged` when the checkpoint was written under another one. The content comes as a
    :class:`~metaspike.continual.checkpoints.LoadedCheckpoint`, a dict that knows its file, so that
    ``ContinualTrainer.fit(..., resume=state)`` names the file where it refuses the content.

    Example:
        >>> state = load_checkpoint("runs/permuted-mnist5k-meta10-seed1/checkpoint.pt")  # doctest: +SKIP
    """
    path = as_path(path, "checkpoint")
    state = load_torch_file(path, "checkpoint")
    check_plain_tensors(state, f"checkpoint {path}")  # (before the checksum copies each tensor, or recurses)
    if not isinstance(state, dict) or "position" not in state:
        raise ValueError(f"checkpoint {path} is not a metaspike checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has the format {state.get('format')!r}, and this metaspike reads "
                         f"{CHECKPOINT_FORMAT!r} (written by another version): start the run again")
    stored = state.pop(CHECKSUM_KEY, None)
    written_under = state.pop(CONFIG_KEY, None)
    if stored is None or written_under is None:
        raise ValueError(f"checkpoint {path} lacks its checksum or the digest of its run's config.json (edited?)")
    try:
        computed = state_checksum(state)
    except Exception as err:  # (what torch reads but cannot hash is damage too: the previous checkpoint is tried)
        raise ValueError(f"checkpoint {path} is damaged: its content cannot be summed to check it "
                         f"({type(err).__name__})") from None
    if stored != computed:
        raise ValueError(f"checkpoint {path} is damaged: its content does not match its checksum")
    if config_digest is not None and written_under != config_digest:
        raise ConfigChanged(f"checkpoint {path} was written under another config.json than {path.parent} holds now "
                            "(the file was edited, or the checkpoint comes from another run): restore the file, or "
                            "start a new run")
    return LoadedCheckpoint(state, path)


def latest_good_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The newest loadable checkpoint of a run directory, and warnings about damaged newer ones.

    Example:
        >>> state, warnings = latest_good_checkpoint("runs/permuted-mnist5k-meta10-seed1")  # doctest: +SKIP
    """
    run_dir = as_path(run_dir, "run folder")
    if run_dir.is_file():  # (the checkpoint's own path: "has no checkpoint to resume from" misled)
        raise ValueError(f"{run_dir} is a file; latest_good_checkpoint takes the run's folder ({run_dir.parent})")
    warnings: list[str] = []
    config_digest = _file_digest(run_dir / "config.json")
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        if (run_dir / name).exists():
            try:
                return load_checkpoint(run_dir / name, config_digest), warnings
            except ConfigChanged:
                raise  # not damage: an older checkpoint of the same run would not fit either
            except ValueError as err:
                warnings.append(str(err))
    if warnings:
        raise ValueError("; ".join(warnings) + "; no usable checkpoint left")
    raise ValueError(f"{run_dir} has no checkpoint to resume from")


def _read_number_csv(file: Path, columns: Sequence[str], index: str,
                     named_by: Path | None = None) -> tuple[list[str], list[list[float]]]:
    """Header and rows of a CSV of numbers: every row as long as the header, each cell finite or empty (NaN).

    The header must hold ``columns`` (those after ``index`` named by the header of ``named_by``, where given); the
    ``index`` column must be filled in every row.
    """
    try:
        text = read_regular_file(file, "CSV file", JSON_MAX_BYTES).decode("utf-8")
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read {file}: {err}") from None
    if not lines or not lines[0]:
        raise ValueError(f"{file} is empty; was it cut short?")
    if not text.endswith("\n"):  # (its last number cut, "90.0" to "9", read as a number as good as any)
        raise ValueError(f"{file} does not end with a line break, as every CSV file metaspike writes does: it was cut "
                         "short")
    header, rows = lines[0], []
    named = set(header)  # (a set: a forged header of 10^5 names took minutes to be compared name by name)
    missing = [c for c in columns if c not in named]
    if missing:
        names = f", which {named_by}'s header names (the two files disagree)" if named_by and missing != [index] else ""
        raise ValueError(f"{file} lacks the columns {listed(missing)} in its header{names}")
    if len(named) != len(header):  # (a task's column twice: which one is the task?)
        seen: set[str] = set()
        twice = next(c for c in header if c in seen or seen.add(c))
        raise ValueError(f"{file} names the column {twice!r} more than once in its header")
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise ValueError(f"{file} line {number} has {len(line)} cells, the header has {len(header)}")
        row = []
        for name, cell in zip(header, line):
            if not cell.strip() and name != index:
                row.append(math.nan)
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"{file} line {number}, column {name!r}: {cell!r} is not a finite number")
            row.append(value)
        rows.append(row)
    return header, rows


def _check_accuracies(file: Path, header: Sequence[str], rows: Sequence[Sequence[float]], names: Sequence[str]) -> None:
    """The cells of the columns ``names`` must be accuracies in [0, 100] or empty (an edited 250 % read back as a
    forgetting of 174 points)."""
    position = {name: k for k, name in enumerate(header)}
    for column in (position[name] for name in names):
        for number, row in enumerate(rows, start=2):
            if not is_accuracy(row[column]):
                raise ValueError(f"{file} line {number}, column {header[column]!r}: {row[column]!r} is not an "
                                 "accuracy in [0, 100]")


def _increasing_whole(values: Sequence[float], high: float) -> bool:
    """Whether ``values`` are strictly increasing whole numbers in ``1..high`` (a file's row numbers).

    Example:
        >>> _increasing_whole([1.0, 3.0], 10), _increasing_whole([2.0, 2.0], 10), _increasing_whole([1e300], 10)
        (True, False, False)
    """
    return all(1 <= v <= high and v == int(v) for v in values) and all(b > a for a, b in zip(values, values[1:]))


def _matrix_rows(rows: list[list[float]], file: Path) -> list[Sequence[float]]:
    """The accuracy matrix from the CSV's rows: row ``k`` after task ``k + 1``; tasks without an evaluation (no row
    in the file) are NaN rows, all one shared tuple, so a long stream's matrix takes memory for its evaluations."""
    numbers = [row[0] for row in rows]
    if not _increasing_whole(numbers, MAX_AFTER_TASK):
        raise ValueError(f"{file}: after_task must hold increasing task numbers >= 1, at most {MAX_AFTER_TASK}")
    not_evaluated = (math.nan,) * (len(rows[0]) - 1)
    matrix: list[Sequence[float]] = [not_evaluated] * int(numbers[-1])
    for n, row in zip(numbers, rows):
        matrix[int(n) - 1] = row[1:]
    return matrix


def load_run(path: str | os.PathLike, first_task_going: bool = False) -> dict[str, Any]:
    """Read a run directory back: config, task names, matrix, curves, metrics, histograms.

    The matrix, the curves and the histograms are checked (a malformed file raises one line of ``ValueError`` naming
    it); ``config.json`` and ``metrics.json`` must be JSON objects and are returned as read (the numbers of a finished
    run's ``metrics.json`` are checked against its matrix where a result is read back to be compared:
    :func:`metaspike.app.runs.finished_result`). Empty cells of ``accuracy_matrix.csv`` and ``curves.csv`` (tasks not
    evaluated) are read as NaN.

    ``first_task_going=True`` also reads a run stopped before its first task ended, which has written the accuracies
    of its epochs (``curves.csv``) and no matrix yet (a task's row is written at its end): its task names then come
    from the curves' header and its matrix is empty.

    Example:
        >>> run = load_run("runs/latest")  # doctest: +SKIP
    """
    path = as_path(path, "run folder")
    matrix_file = path / "accuracy_matrix.csv"
    if not matrix_file.exists() and first_task_going and (path / "curves.csv").exists():
        return _first_task_going(path)
    if not matrix_file.exists():
        raise ValueError(f"{path} is not a run directory (no accuracy_matrix.csv)")
    header, rows = _read_number_csv(matrix_file, ["after_task"], "after_task")
    _check_accuracies(matrix_file, header, rows, header[1:])
    if header[0] != "after_task" or len(header) < 2:
        raise ValueError(f"{matrix_file} must start with a header 'after_task,<task names>', found {listed(header)}")
    if not rows:
        raise ValueError(f"{matrix_file} holds no results (only its header)")
    task_names = header[1:]
    matrix = _matrix_rows(rows, matrix_file)
    curves_file = path / "curves.csv"
    curves = _read_curves(curves_file, task_names, matrix_file) if curves_file.exists() else []
    return {
        "path": path,
        "config": _read_object(path / "config.json", dict),
        "task_names": task_names,
        "matrix": matrix,
        "curves": curves,
        "metrics": _read_object(path / "metrics.json", dict),
        "histograms": check_histograms(_read_object(path / "hidden_weights.json", list), path / "hidden_weights.json"),
    }


def _read_curves(file: Path, task_names: Sequence[str], named_by: Path | None) -> list[dict[str, float]]:
    """The rows of ``curves.csv`` (``file``), checked: a column per task of ``task_names`` (as ``named_by``'s header
    names them, where given), accuracies in [0, 100], increasing epochs."""
    columns, values = _read_number_csv(file, ["global_epoch", *task_names], "global_epoch", named_by)
    return _checked_curves(file, columns, values, task_names)


def _checked_curves(file: Path, columns: Sequence[str], values: Sequence[Sequence[float]],
                    task_names: Sequence[str]) -> list[dict[str, float]]:
    """The rows ``values`` of ``curves.csv`` (``file``, header ``columns``) as dicts, checked: accuracies in [0, 100]
    in the columns of ``task_names``, increasing epochs."""
    _check_accuracies(file, columns, values, task_names)
    curves = [dict(zip(columns, row)) for row in values]
    if not _increasing_whole([row["global_epoch"] for row in curves], MAX_GLOBAL_EPOCH):
        raise ValueError(f"{file}: global_epoch must hold increasing whole numbers in 1..{MAX_GLOBAL_EPOCH:,}")
    return curves


def _read_object(file: Path, kind: type) -> Any:
    """The JSON object (``kind`` dict) or list (``kind`` list) in ``file``; an empty one where it is missing."""
    if not file.exists():
        return kind()
    data = read_json(file)
    if not isinstance(data, kind):
        raise ValueError(f"{file} is malformed: expected a JSON {'object' if kind is dict else 'list'}, "
                         f"found {type(data).__name__}")
    return data


def _first_task_going(path: Path) -> dict[str, Any]:
    """:func:`load_run` of a run folder whose first task has not ended: its task names from the header of its
    ``curves.csv`` (the columns after :data:`CURVE_COLUMNS`), no matrix, no histograms. A folder whose files say a
    task ended (``hidden_weights.json``, ``metrics.json``, curves of a later task) lacks its matrix: refused."""
    curves_file = path / "curves.csv"
    header, rows = _read_number_csv(curves_file, ["global_epoch"], "global_epoch")  # (a regular file of numbers)
    task_names = header[len(CURVE_COLUMNS):]
    if list(header[:len(CURVE_COLUMNS)]) != list(CURVE_COLUMNS) or not task_names or not all(task_names):
        raise ValueError(f"{curves_file} must start with a header '{','.join(CURVE_COLUMNS)},<task names>' (each "
                         f"name not empty), found {listed(header[:len(CURVE_COLUMNS) + 1])}")
    ended = [name for name in ("hidden_weights.json", "metrics.json") if (path / name).exists()]
    if ended or any(row[0] != 1 for row in rows):  # (the "task" column: a later task's epochs)
        why = f"{listed(ended)} written" if ended else "curves.csv holding a later task's epochs"
        raise ValueError(f"{path / 'accuracy_matrix.csv'} is missing (moved or deleted?), though the run has ended a "
                         f"task ({why})")
    return {"path": path, "config": _read_object(path / "config.json", dict), "task_names": task_names, "matrix": [],
            "curves": _checked_curves(curves_file, header, rows, task_names), "metrics": {}, "histograms": []}
