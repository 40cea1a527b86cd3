"""Functions compiled by ``torch.compile`` on first use, with an eager fallback."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from metaspike.caller import user_stacklevel

__all__ = ["LazyCompiled", "LARGE_TENSOR_LOOPS", "compiling_disabled", "uncompiled", "is_compiled_wrapper"]

LARGE_TENSOR_LOOPS = {"cpp.dynamic_threads": True}
"""Compiler options for a function over large tensors: its CPU loops always run in a parallel region of as many
threads as the process has when it runs. Without them inductor decides from the sizes of the call that compiled the
kernel, and its cache keeps that kernel for every later size: a ``MetaplasticAdam`` step compiled once on a small
``fused=True`` tensor ran every later process's 1024 x 1024 update on one thread (0.94 ms an optimizer step of
784-1024-1024-10 compiled afresh, 1.42-1.52 ms from that cached kernel; 2-core AMD EPYC Zen 5, two threads)."""


def _vector_bits() -> int:
    """The vector width in bits that inductor's CPU code takes in this process (0: none), to be given to it as
    ``cpp.simdlen``. It does by itself, but its cache of compiled code did not tell kernels of one width from another:
    a kernel compiled in a process with AVX-512 and found again in one that takes AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
    or a cache carried to another machine) wrote half of a large layer's sign buffer wrong (524,288 of 1,048,576
    entries; torch 2.13, reproduced with a bare ``torch.compile``). Given, the width is part of the cache's key."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return isa.bit_width() if isa else 0


def _is_recompile_limit(err: Exception) -> bool:
    """Whether ``err`` is torch's refusal of one more compiled variant of a function than it allows
    (``torch._dynamo.config.recompile_limit``, with ``fullgraph=True``); told by name: importing torch's compiler
    to compare classes would slow every ``import metaspike``."""
    return type(err).__name__ == "FailOnRecompileLimitHit" and type(err).__module__.startswith("torch._dynamo")


def _on_meta(args: tuple[Any, ...]) -> bool:
    """Whether the first tensor among ``args`` (or inside a first list or tuple of them) is on the ``meta`` device."""
    for value in args:
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, torch.Tensor):
            return value.device.type == "meta"
    return False


def _signature(value: Any) -> Any:
    """What tells two calls' arguments apart for the compiled variants: each tensor's dtype, device, shape and
    strides, each list's or tuple's items, a number's type (numbers are graph inputs), any other object itself (a
    plan the function is specialised on)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.device, tuple(value.shape), value.stride()
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _signature(item)) for key, item in value.items())
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value)
    return type(value), id(value)


_NOTHING_COMPILED = "torch.compile with fullgraph=True found no compiled frames"
"""How torch's error begins when its compiled wrapper ran a function uncompiled (a frame it skipped) and raised after
the function had returned (``torch/_dynamo/eval_frame.py``, torch 2.13)."""

_TORCH_MODULES = r"torch(\.|$)"
"""The modules whose warnings are torch's own (a ``module`` pattern of :func:`warnings.filterwarnings`)."""


def is_compiled_wrapper(module: torch.nn.Module) -> bool:
    """Whether ``module`` is the module ``torch.compile(model)`` returns, which wraps ``model`` (as ``_orig_mod``).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> is_compiled_wrapper(torch.compile(net)), is_compiled_wrapper(net)
        (True, False)
    """
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The model that ``model`` wraps where it is ``torch.compile(...)``'s module, else ``model``: what a function that
    reads or records a model's layers (rather than running it fast) works on, so that it compiles nothing and names
    the layers as the user's model does.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> uncompiled(torch.compile(net)) is net, uncompiled(net) is net
        (True, True)
    """
    return getattr(model, "_orig_mod", model) if is_compiled_wrapper(model) else model


def compiling_disabled() -> bool:
    """Whether ``torch.compile`` is switched off here, so that a compiled function would run its Python uncompiled:
    by ``TORCH_COMPILE_DISABLE=1`` or ``torch._dynamo.config.disable``, by ``TORCHDYNAMO_DISABLE=1``, by
    ``torch.compiler.set_stance("force_eager")``, or inside a torch dispatch mode that torch does not compile under
    (``FlopCounterMode``, ...). Read at every call: each of them may change between calls.

    Example:
        >>> with torch.compiler.set_stance("force_eager"):
        ...     compiling_disabled()
        True
    """
    dynamo = torch._dynamo
    if dynamo.config.disable or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        return True
    if dynamo.eval_frame._stance.stance == "force_eager":
        return True
    return bool(torch._C._len_torch_dispatch_stack()) and _dispatch_mode_skips_compiling()


def _dispatch_mode_skips_compiling() -> bool:
    """Whether a dispatch mode on the stack makes torch run compiled functions uncompiled (modes of torch's own
    infrastructure, or ones that ignore compiling, do not)."""
    from torch.utils._python_dispatch import any_torch_dispatch_mode_on_stack

    return any_torch_dispatch_mode_on_stack()


def _compile_failed(err: Exception) -> bool:
    """Whether ``err`` is torch's compiler failing on a call before any of the function ran: with ``fullgraph=True``
    the function is traced and compiled whole before its compiled code runs, and the compile step
    (``torch/_dynamo/convert_frame.py``, torch 2.13) raises its own exceptions (``BackendCompilerFailed``, which
    inductor's errors subclass, ``Unsupported``, ``InternalTorchDynamoError`` around anything else it met, ...), or
    an ``AssertionError`` or ``IndexError`` as met. Anything else was raised by the compiled code while it ran."""
    return isinstance(err, (torch._dynamo.exc.TorchDynamoException, AssertionError, IndexError))


def _fn_raised_while_traced(err: Exception) -> bool:
    """Whether ``err`` is torch's compiler reporting that tracing reached a ``raise`` in the function itself (an
    error of a user's rule, a refused argument) before any of it ran: the function would raise that in eager too."""
    return isinstance(err.__cause__, torch._dynamo.exc.ObservedException)


def _first_line(err: BaseException) -> str:
    """``err`` in one line: its class and its message's first line, of the error inside where torch's compiler
    wrapped one (``backend='inductor' raised:`` tells nothing)."""
    inner = getattr(err, "inner_exception", None)
    if isinstance(inner, BaseException):
        err = inner
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _warnings_raise() -> bool:
    """Whether a warnings filter turns some warning into an error (``python -W error``, ``PYTHONWARNINGS=error``)."""
    return any(item[0] == "error" for item in warnings.filters)


class LazyCompiled:
    """``fn`` compiled by ``torch.compile`` on its first call (never at import), else ``fn`` itself.

    Shapes are dynamic and Python floats are graph inputs, so new sizes and values do not
    recompile; ``options`` go to the compiler. Calls on ``meta`` tensors (shape inference) run ``fn`` eagerly, and so
    do calls while compiling is switched off (:func:`compiling_disabled`), without a word. If
    compiling fails (no C++ compiler, unsupported
    platform, ...), it warns once and calls ``fn`` eagerly from then on; a call past torch's limit of compiled
    variants of one function (different input counts or dtypes in one process) runs eagerly, the others stay compiled;
    arguments of the same dtypes, shapes and strides as such a call then run eagerly at once, without asking torch's
    compiler again (which costs more than the call and logs a warning each time). Used for
    MetaplasticAdam's fused step, the sign buffers of large binary layers and ``bnn.pack``.

    No call runs ``fn`` twice (``fn`` may change its arguments in place): it runs eagerly only where the compiler
    failed before any of it ran, its own warning comes before that run (so a warnings-as-errors setting stops the
    call before anything changed), and torch's own warnings while it compiles are shown, never raised. Where the
    trace met a ``raise`` of ``fn`` itself (a user's rule refusing its input), the call runs ``fn`` eagerly, which
    raises that error as eager code would, and later calls are compiled as before.

    Example:
        >>> double = LazyCompiled(lambda x: 2 * x, "doubling")  # nothing is compiled yet
        >>> double.broken
        False
    """

    def __init__(self, fn: Callable[..., Any], what: str, options: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.what = what
        self.options = options
        self.broken = False
        self.limit_reached = False
        self.last_call_eager = False  # (whether the last call ran fn eagerly: a caller with a faster way may take it)
        self._eager_signatures: set[Any] = set()  # (the arguments past the limit of variants)
        self._compiled: Callable[..., Any] | None = None

    def runs_eagerly(self) -> bool:
        """Whether a call now runs ``fn`` eagerly whatever its arguments: compiling failed, or is switched off.

        Example:
            >>> with torch.compiler.set_stance("force_eager"):
            ...     LazyCompiled(lambda x: 2 * x, "doubling").runs_eagerly()
            True
        """
        return self.broken or compiling_disabled()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.last_call_eager = True
        if self.broken or _on_meta(args) or compiling_disabled():  # (meta tensors hold no data: shapes come from
            return self.fn(*args, **kwargs)  # fn's ops, and a compile failing on them would leave later calls eager)
        signature = _signature((args, kwargs)) if self.limit_reached else None
        if signature is not None and signature in self._eager_signatures:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            try:
                options = {"cpp.simdlen": _vector_bits(), **(self.options or {})}
                self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=options)
            except Exception as err:  # (torch.compile refuses this platform or these options: nothing ran)
                return self._fall_back(err, args, kwargs)
        try:
            result = self._call_compiled(args, kwargs)
        except Exception as err:
            if _is_recompile_limit(err):
                return self._past_limit(args, kwargs)
            if str(err).startswith(_NOTHING_COMPILED):  # (torch skipped fn's frame for a reason compiling_disabled
                self.broken = True  # does not know, ran fn and lost its result; it skips that frame from now on)
                raise RuntimeError(f"torch.compile ran the {self.what} uncompiled, then raised ({_first_line(err)}); "
                                   "its changes are made but its result is lost, so it is not run again (later "
                                   "calls run it eagerly)") from None
            if not _compile_failed(err):  # (an error of the compiled code while it ran: fn's own)
                raise
            if _fn_raised_while_traced(err):
                return self._run_where_fn_raised(err, args, kwargs)
            return self._fall_back(err, args, kwargs)
        self.last_call_eager = False
        return result

    def _call_compiled(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` on the arguments by its compiled code, compiled first where no variant fits them. Where a warnings
        filter raises warnings, torch's own warnings are only shown meanwhile: raised inside the compiler, one (the
        deprecation of ``torch.jit.script_method`` that inductor meets) failed every compile under
        ``python -W error``. (``warnings.catch_warnings`` swaps the process's filters: while such a call runs,
        another thread's warnings from torch are shown, not raised.)"""
        if not _warnings_raise():
            return self._compiled(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("default", module=_TORCH_MODULES)
            return self._compiled(*args, **kwargs)

    def _past_limit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` run eagerly on arguments past torch's limit of compiled variants (input counts, dtypes): new
        variants run eagerly, the compiled ones stay in use; warned once."""
        if not self.limit_reached:
            self.limit_reached = True
            warnings.warn(f"the {self.what} has compiled torch's limit of variants in this process; new "
                          "variants run eagerly (slower)", RuntimeWarning, stacklevel=user_stacklevel())
        self._eager_signatures.add(_signature((args, kwargs)))
        return self.fn(*args, **kwargs)

    def _run_where_fn_raised(self, err: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` run eagerly where its trace met a ``raise`` of its own, so that the caller gets ``fn``'s own error,
        and later calls are compiled again (the error was the function's, not the compiler's). Should ``fn`` return
        instead (the raise was the trace's alone), it runs eagerly from now on, warned after this call."""
        result = self.fn(*args, **kwargs)
        self.broken = True
        warnings.warn(f"torch.compile of the {self.what} failed ({_first_line(err)}) where the eager run does "
                      "not; running it eagerly (slower) from now on", RuntimeWarning, stacklevel=user_stacklevel())
        return result

    def _fall_back(self, err: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` run eagerly, now and from now on, after its compile failed with ``err`` before any of it ran. The
        warning comes first: raised as an error, it stops the call before ``fn`` changed anything (and the next
        call runs eagerly without a word)."""
        self.broken = True
        warnings.warn(f"torch.compile of the {self.what} failed ({_first_line(err)}); running it eagerly (slower) "
                      "from now on", RuntimeWarning, stacklevel=user_stacklevel())
        return self.fn(*args, **kwargs)  # (an error of fn itself is raised here, without the compiler's words)
