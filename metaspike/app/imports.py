"""``--import``: a user's own modules, imported before a run so that what they register can be named on the command
line (a consolidation rule by :func:`metaspike.rules.register_rule`, a spiking neuron model by
:func:`metaspike.snn.register_neuron`, which ``--model`` and ``compare --neurons`` then take).

A module is named as Python imports it (``mylab.rules``, found on ``sys.path``) or by the path of its ``.py`` file.
The run records what it imported (:attr:`metaspike.app.config.RunConfig.imports`), but a run folder never imports
anything by itself: ``--resume`` asks for the same ``--import`` again, so a folder from elsewhere cannot run code. It
also records the SHA-256 of each imported file and of the user's own modules that importing it brought in (a rule kept
in a package module that the ``--import`` file imports), so that a resume under edited code is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shlex
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import torch

from metaspike.checks import in_metaspike, raised_at

__all__ = ["import_modules", "normalized_import", "check_resumed_imports", "import_flags", "import_digests",
           "changed_imports", "FLAG"]

FLAG = "--import"

_BROUGHT_IN: dict[str, tuple[str, ...]] = {}
"""For each import of this process (as recorded: :func:`normalized_import`), the source files of the user's own
modules that importing it loaded (:func:`_users_files`)."""


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def normalized_import(spec: str) -> str:
    """How a run records ``spec``: a module name as given, a file as its absolute path.

    Example:
        >>> normalized_import("mylab.rules")
        'mylab.rules'
        >>> normalized_import("rules.py") == str(Path("rules.py").resolve())
        True
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{FLAG} takes a module name or the path of a .py file, got {spec!r}")
    return str(Path(spec).resolve()) if _is_file(spec) else spec


def _where(err: BaseException, origin: str | None) -> str:
    """``file line N: `` of the innermost frame of ``err`` in the imported module's own file, if any."""
    place = raised_at(err, origin) if origin or isinstance(err, SyntaxError) else ""
    return f"{place}: " if place else ""


def _load_file(path: Path) -> ModuleType:
    """The module of the ``.py`` file at ``path`` (absolute), run once per process as ``import`` runs a module."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a Python file (a folder, device or pipe)" if path.exists()
                                else f"no such file {path}")
    name = f"metaspike_import_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses and pickling look a module up by its name)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _origin(spec: str) -> str | None:
    """The file a module name imports from, where it can be found without running anything."""
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        return None
    return None if found is None else found.origin


def import_modules(specs: Sequence[str]) -> tuple[str, ...]:
    """Import each of ``specs`` (module names or ``.py`` files) once, in order; return them as a run records them
    (:func:`normalized_import`). A module that cannot be imported is one ``ValueError`` naming it, the file and line
    where it failed, and the error.

    Example:
        >>> import_modules(["json"])
        ('json',)
    """
    done: list[str] = []
    for spec in specs:
        if isinstance(spec, str) and "\0" in spec:  # (importlib and the file system say only "embedded null byte")
            raise ValueError(f"{FLAG} {spec!r}: holds a NUL character, which no module or file name may hold")
        recorded = normalized_import(spec)
        if recorded in done:
            continue
        before, folder, dtype = set(sys.modules), os.getcwd(), torch.get_default_dtype()
        try:
            if _is_file(spec):
                _load_file(Path(recorded))
            else:
                importlib.import_module(spec)
        except (Exception, SystemExit) as err:  # (a user's module may raise anything while it runs, or call sys.exit)
            _put_back(folder, dtype)  # (what it changed before it failed: a process that goes on runs as before)
            origin = recorded if _is_file(spec) else _origin(spec)
            hint = ("; the installed metaspike command does not look in the current folder: give the file's path "
                    f"({spec}.py) or run python -m metaspike" if isinstance(err, ModuleNotFoundError)
                    and not _is_file(spec) and Path(f"{spec.replace('.', '/')}.py").is_file() else "")
            raise ValueError(f"{FLAG} {spec}: {_where(err, origin)}{type(err).__name__}: {err}{hint}") from None
        module = None if _is_file(spec) else sys.modules.get(spec)
        if module is not None and getattr(module, "__file__", None) is None and hasattr(module, "__path__"):
            raise ValueError(f"{FLAG} {spec}: is a folder without __init__.py (a namespace package), which runs no "
                             f"code and so registers nothing: give the .py file that registers your models or rules "
                             f"({spec.replace('.', '/')}/NAME.py) or its module name ({spec}.NAME)")
        try:
            _check_left_alone(spec, folder, dtype)
        except ValueError:  # (put back as they were, the module forgotten: fixed, it is imported anew)
            _put_back(folder, dtype)
            for name in set(sys.modules) - before:
                del sys.modules[name]
            raise
        own = _source_file(recorded)
        _BROUGHT_IN.setdefault(recorded, tuple(sorted(
            path for path in _users_files(sys.modules.get(name) for name in set(sys.modules) - before) if path != own)))
        done.append(recorded)
    return tuple(done)


def _put_back(folder: str, dtype: torch.dtype) -> None:
    """The working folder and torch's default dtype as they were before a module given to ``--import`` failed."""
    os.chdir(folder)
    torch.set_default_dtype(dtype)


def _check_left_alone(spec: str, folder: str, dtype: torch.dtype) -> None:
    """One ``ValueError`` where importing ``spec`` changed the working folder or torch's default dtype, which the run
    does not record: its relative paths would lead elsewhere, or its models would be built in another dtype, and a
    resume without the import would mix the two."""
    if os.getcwd() != folder:
        raise ValueError(f"{FLAG} {spec} changed the working folder ({folder} -> {os.getcwd()}); a module given to "
                         f"{FLAG} must leave it alone (run the command from the folder you want instead)")
    if torch.get_default_dtype() != dtype:
        raise ValueError(f"{FLAG} {spec} changed torch's default dtype ({dtype} -> {torch.get_default_dtype()}), "
                         f"which a run does not record; a module given to {FLAG} must leave it alone")


def _users_files(modules: Iterable[ModuleType]) -> list[str]:
    """The source files of those of ``modules`` that are the user's own: ``.py`` files outside Python's own library,
    the installed packages and metaspike."""
    paths = sysconfig.get_paths()
    installed = tuple({str(Path(paths[key]).resolve()) + os.sep
                       for key in ("stdlib", "platstdlib", "purelib", "platlib")})
    files = []
    for module in modules:
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(".py") and Path(file).is_file():
            path = str(Path(file).resolve())
            if not path.startswith(installed) and not in_metaspike(path):
                files.append(path)
    return files


def _source_file(recorded: str) -> str | None:
    """The source file of an import as a run records it: a file's path, or the file a module name imports from."""
    return recorded if _is_file(recorded) else _origin(recorded)


def import_flags(stored: object) -> str:
    """`` --import X`` for each import a run or comparison recorded (``stored``, as read from its files): what its
    ``--resume`` command needs (:func:`check_resumed_imports` refuses it without them).

    Example:
        >>> import_flags(["/lab/my lab.py", "mylab.rules"])
        " --import '/lab/my lab.py' --import mylab.rules"
        >>> import_flags([])
        ''
    """
    recorded = stored if isinstance(stored, (list, tuple)) else ()
    return "".join(f" {FLAG} {shlex.quote(spec)}" for spec in recorded if isinstance(spec, str))


def import_digests(recorded: Sequence[str]) -> dict[str, str]:
    """SHA-256 of the source file of each import a run records (:func:`normalized_import`; a module name by the file it
    imports from; none for one without a source file), and of each of the user's own modules that importing it
    brought in, keyed by its path: what a resumed run compares, since a file may have been edited meanwhile and the
    run would then go on under other code than it started with.

    Example:
        >>> list(import_digests(["json"]))
        ['json']
    """
    digests = {}
    for spec in recorded:
        for key, origin in [(spec, _source_file(spec)), *((path, path) for path in _BROUGHT_IN.get(spec, ()))]:
            if origin is not None and Path(origin).is_file():
                digests[key] = hashlib.sha256(Path(origin).read_bytes()).hexdigest()
    return digests


def changed_imports(stored: object, recorded: Sequence[str]) -> list[str]:
    """The imported files of ``recorded`` (and the user's modules they brought in) whose source differs from the
    SHA-256 ``stored`` (as read from a run's files; runs made before the digests were kept store none: nothing is
    compared). Only files this process imported are read, never a path the stored record names by itself.

    Example:
        >>> changed_imports({"json": "0" * 64}, ["json"])
        ['json']
    """
    if not isinstance(stored, dict):
        return []
    now = import_digests(recorded)
    return [key for key in now if key in stored and stored[key] != now[key]]


def check_resumed_imports(stored: object, given: Sequence[str], where: str) -> None:
    """Refuse to resume a run or comparison (``where``) whose recorded imports (``stored``, as read from its files)
    are not exactly the ones given now: another module under the same rule or model name would silently change
    the rest of it, and a run folder never names code to import by itself.

    Example:
        >>> check_resumed_imports([], (), "runs/r")
        >>> check_resumed_imports(["/lab/mylab.py"], (), "runs/r")
        Traceback (most recent call last):
        ...
        ValueError: runs/r was made with --import /lab/mylab.py; resume it with the same --import (given: none)
    """
    recorded = tuple(stored) if isinstance(stored, list) and all(isinstance(i, str) for i in stored) else ()
    if recorded != tuple(given):
        made = " ".join(recorded) if recorded else "no --import"
        raise ValueError(f"{where} was made with {FLAG + ' ' if recorded else ''}{made}; resume it with the same "
                         f"{FLAG} (given: {' '.join(given) if given else 'none'})")
