"""Counter-based random numbers for weight samples: one 64-bit hash per two numbers, computed inside the fused loops.

A weight sample of a Bayesian layer needs ``S·n`` random numbers per step. Drawing them from torch's
generator first (``torch.randn``, ``Tensor.random_``: several ns per number on one CPU thread, about half of
a batch-1 MESU step) writes them to memory before the sampling loop reads them back. Here word ``i`` of a draw
(64 random bits) is a pure function of ``(key, i)``: the SplitMix64 output function (Steele, Lea and Flood 2014; Stafford's "mix13" finaliser) applied to
``(key + i)·γ``, with ``γ`` the 64-bit golden ratio. It is a handful of integer operations that the
compiled sampling loops vectorise and fuse with the sample itself, so nothing but the sample is written.

``key`` is one 64-bit draw from torch's default generator per call (:func:`draw_key`), so
``torch.manual_seed`` makes the samples reproducible and a checkpoint that saves torch's RNG state
resumes them exactly. Keys ``k`` and ``k + d`` give the same words shifted by ``d`` counters, so two draws
overlap only if their keys lie within ``S·n`` of each other: for random 64-bit keys, a probability below
``2⁻⁴⁰`` per pair of draws of a million numbers.

A uniform takes one word (its top 24 bits). Normals come in pairs: Box-Muller on the two 24-bit uniforms of a word
(top and low bits) gives ``√(−2 ln u₁)·cos 2πu₂`` and ``·sin 2πu₂`` (cosine and sine by polynomials,
:func:`cos_two_pi`, :func:`sin_two_pi`), the cosines in the first half of the draw and the sines in the second, so
``m`` normals hash ``⌈m/2⌉`` counters and one log and one square root make two numbers: MESU's samples cost a fifth
less than with a word per normal. (Uniforms in pairs would save half a hash but have to pass through memory
between two loops, which costs BiMU's fused sample more: 0.57 against 0.40 ms at 5 samples of 78,400 weights.)
Resolution: a uniform is ``(k + ½)/2²⁴``, never 0 or 1, so ``|ε| < 5.9``, the same cut-off as torch's float32
``randn``, which also builds on 24-bit uniforms. (In float32, ``k + ½`` needs 25 significant bits: above ``2²³`` it
rounds to an even neighbour, and the top one to 1. Box-Muller takes that 1 in its stride, ``ln 1 = 0``, but
``log(u/(1 − u))`` would be infinite: :func:`counter_uniform` holds it at the largest float32 below 1.) Draws are
computed in float32 or float64 only (:func:`arithmetic_dtype`): bfloat16 and float16 would round many uniforms near
1 to 1 (float16 cannot even hold ``k``).

Integer arithmetic wraps modulo ``2⁶⁴`` in torch's int64 operations, eager and compiled; logical right
shifts are arithmetic shifts masked to the low bits (:func:`_shift_right`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["draw_key", "draw_keys", "random_words", "uniform_pairs", "normal_pairs", "cos_two_pi", "sin_two_pi", "counter_uniform",
           "counter_normal", "arithmetic_dtype"]


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN_GAMMA = _int64(0x9E3779B97F4A7C15)
MIX1 = _int64(0xBF58476D1CE4E5B9)
MIX2 = _int64(0x94D049BB133111EB)
_BITS24 = (1 << 24) - 1


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 ``x`` (torch's ``>>`` on int64 is arithmetic: mask off the sign copies)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def draw_key(device: torch.device | str | None = None) -> Tensor:
    """One 64-bit key (a 0-d int64 tensor on ``device``) from torch's default CPU generator.

    Example:
        >>> _ = torch.manual_seed(0); a = draw_key()
        >>> _ = torch.manual_seed(0); bool(draw_key() == a), a.dtype
        (True, torch.int64)
    """
    return draw_keys((), device)


def draw_keys(shape: tuple[int, ...], device: torch.device | str | None = None) -> Tensor:
    """Keys of ``shape`` in one draw: in order, the keys that as many calls of :func:`draw_key` give.

    Example:
        >>> _ = torch.manual_seed(0); keys = draw_keys((2,))
        >>> _ = torch.manual_seed(0); bool(keys[0] == draw_key() and keys[1] == draw_key())
        True
    """
    keys = torch.randint(-(1 << 63), (1 << 63) - 1, shape, dtype=torch.int64)
    return keys if device is None else keys.to(device)


def random_words(key: Tensor, index: Tensor) -> Tensor:
    """64 random bits (int64) for each counter in ``index`` (int64), under ``key``.

    The counter is added to the key *before* the multiplication by ``γ``: inductor folds ``index·γ``
    into its index arithmetic when ``index`` is an ``arange``, where a 64-bit overflow is not modelled.

    Example:
        >>> w = random_words(torch.tensor(7), torch.arange(3))
        >>> w.dtype, len(set(w.tolist()))
        (torch.int64, 3)
    """
    z = _words_before_last_shift(key, index)
    return z ^ _shift_right(z, 31)


def _words_before_last_shift(key: Tensor, index: Tensor) -> Tensor:
    """:func:`random_words` without its last step ``z ^ (z >> 31)``, which changes only the low 33 bits (``z >> 31``
    has no more) and leaves the top 31 as they are: a uniform, which takes the top 24, skips it."""
    z = (index + key) * GOLDEN_GAMMA
    z = (z ^ _shift_right(z, 30)) * MIX1
    return (z ^ _shift_right(z, 27)) * MIX2


_ARITHMETIC = (torch.float32, torch.float64)  # the dtypes draws are computed in


def arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype random draws for tensors of ``dtype`` are computed in: ``dtype`` itself for float32 and float64,
    float32 for narrower ones (whose results the caller rounds to ``dtype`` once the draw has done its work).

    Example:
        >>> arithmetic_dtype(torch.float64), arithmetic_dtype(torch.bfloat16)
        (torch.float64, torch.float32)
    """
    return dtype if dtype in _ARITHMETIC else torch.float32


def _check_arithmetic(dtype: torch.dtype) -> None:
    if dtype not in _ARITHMETIC:
        raise ValueError(f"random draws are computed in float32 or float64, got {dtype} (see arithmetic_dtype)")


def uniform_pairs(words: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Two uniforms on ``(0, 1)`` from each of ``words``: ``(k + ½) / 2²⁴`` for ``k`` its top and its low 24 bits
    (``dtype`` float32 or float64; in float32 the top ``k`` gives 1, which Box-Muller takes as it is).

    Example:
        >>> high, low = uniform_pairs(torch.tensor([0, -1]), torch.float64)  # all bits 0, all bits 1
        >>> high.tolist(), low.tolist()
        ([2.9802322387695312e-08, 0.9999999701976776], [2.9802322387695312e-08, 0.9999999701976776])
    """
    return _high_uniform(words, dtype), _uniform(words & _BITS24, dtype)


def _high_uniform(words: Tensor, dtype: torch.dtype) -> Tensor:
    """The uniform of the top 24 bits of ``words`` (a uniform draw's, and the first of :func:`uniform_pairs`)."""
    return _uniform(_shift_right(words, 40), dtype)


def _uniform(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """``(k + ½) / 2²⁴`` for 24-bit integers ``k`` (float32 rounds the top one to 1)."""
    _check_arithmetic(dtype)
    return (bits.to(dtype) + 0.5) * (1.0 / (1 << 24))


def _even_polynomial(x: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """``Σ_k c_k x^{2k}`` by Horner's rule in ``x²`` (the coefficients rounded to ``x``'s dtype, as Python numbers
    are in torch's arithmetic)."""
    z = x * x
    poly = z * coefficients[-1] + coefficients[-2]
    for coefficient in coefficients[-3::-1]:
        poly = poly * z + coefficient
    return poly


#: Taylor coefficients of cos(πx) in x², (−1)^k π^{2k} / (2k)!, k = 0 ... 8: on |x| <= 1 the first omitted
#: term bounds the error by π^18/18! < 1.4e-7, about one float32 rounding of a number near 1.
_COS_PI = tuple((-1) ** k * math.pi ** (2 * k) / math.factorial(2 * k) for k in range(9))

#: Taylor coefficients of sin(πx)/x in x², (−1)^k π^{2k+1} / (2k+1)!, k = 0 ... 8: on |x| <= 1 the first omitted
#: term bounds the error by π^19/19! < 2.3e-8.
_SIN_PI = tuple((-1) ** k * math.pi ** (2 * k + 1) / math.factorial(2 * k + 1) for k in range(9))


# The coefficients reach a compiled loop as constants of its code. Read from a module-level tuple, each float would be
# a graph input that every call converts to a tensor and checks in the compiled function's guards (as 0-d tensors they
# were 18 more tensors to guard and 18 ``item()`` calls per call: about 50 µs of a 1.6 ms batch-1 MESU step, AMD EPYC
# with AVX2).
@torch.compiler.assume_constant_result
def _cos_pi_coefficients() -> tuple[float, ...]:
    return _COS_PI


@torch.compiler.assume_constant_result
def _sin_pi_coefficients() -> tuple[float, ...]:
    return _SIN_PI


def cos_two_pi(t: Tensor) -> Tensor:
    """``cos(2πt)`` for ``t`` in ``[0, 1]``, as ``−cos(πx)`` with ``x = 2t − 1`` by its Taylor polynomial: a few
    multiply-adds where a general cosine first reduces its argument (MESU's noise samples about 15 % faster than
    with ``torch.cos``). The polynomial is within ``1.4e-7`` of the cosine; in float32 the roundings of ``x²`` and
    of the Horner sums (below 4) keep the result within ``8e-7``.

    Example:
        >>> t = torch.linspace(0, 1, 9)
        >>> bool((cos_two_pi(t) - torch.cos(2 * math.pi * t)).abs().max() < 8e-7)
        True
    """
    return -_even_polynomial(2.0 * t - 1.0, _cos_pi_coefficients())


def sin_two_pi(t: Tensor) -> Tensor:
    """``sin(2πt)`` for ``t`` in ``[0, 1]``, as ``−sin(πx)`` with ``x = 2t − 1`` by its Taylor polynomial (see
    :func:`cos_two_pi`). Within ``2.3e-8`` of the sine; float32 adds the roundings of ``x`` (for ``t < ¼``, at most
    3e-8, times ``π``), of ``x²`` (6e-8 times ``|x·P'(x²)| <= 2.2``) and of the Horner steps (partial sums below 5.2:
    at most 2.4e-7 each for the three largest, less for the rest), below ``1.2e-6`` in all.

    Example:
        >>> t = torch.linspace(0, 1, 9)
        >>> bool((sin_two_pi(t) - torch.sin(2 * math.pi * t)).abs().max() < 1.2e-6)
        True
    """
    x = 2.0 * t - 1.0
    return -_even_polynomial(x, _sin_pi_coefficients()) * x


def normal_pairs(words: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Two independent standard normals from each of ``words``, by Box-Muller on its two 24-bit uniforms
    (:func:`uniform_pairs`: the top bits give the radius, the low bits the angle).

    Example:
        >>> first, second = normal_pairs(torch.tensor([0, 12345]), torch.float32)
        >>> bool((first.abs() < 5.9).all() and (second.abs() < 5.9).all())
        True
    """
    radius_uniform, angle = uniform_pairs(words, dtype)
    radius = torch.sqrt(-2.0 * torch.log(radius_uniform))
    return radius * cos_two_pi(angle), radius * sin_two_pi(angle)


def _counters(count: int, device: torch.device) -> Tensor:
    return torch.arange(count, dtype=torch.int64, device=device)


def counter_uniform(shape: tuple[int, ...], key: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``shape`` uniforms on ``(0, 1)`` under ``key``, one word each (eager, or inlined into a compiled sampling loop);
    ``dtype`` float32 or float64 (:func:`arithmetic_dtype`). The top draw, which float32 rounds to 1, is held at the
    largest float32 below 1, so ``log(u/(1 − u))`` stays finite.

    Example:
        >>> u = counter_uniform((2, 3), torch.tensor(1))
        >>> u.shape, bool(((u > 0) & (u < 1)).all())
        (torch.Size([2, 3]), True)
    """
    words = _words_before_last_shift(key, _counters(math.prod(shape), key.device))  # (the top bits of random_words')
    return _high_uniform(words, dtype).clamp_max(1.0 - torch.finfo(dtype).eps / 2).view(shape)


def counter_normal(shape: tuple[int, ...], key: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``shape`` standard normals under ``key``, two per word: the words' cosine normals, then their sine normals,
    the last dropped when the count is odd (eager, or inlined into a compiled sampling loop); ``dtype`` float32 or
    float64 (:func:`arithmetic_dtype`).

    Example:
        >>> counter_normal((4,), torch.tensor(1)).shape
        torch.Size([4])
    """
    count = math.prod(shape)
    words = random_words(key, _counters((count + 1) // 2, key.device))
    return torch.cat(normal_pairs(words, dtype))[:count].view(shape)
