"""Compiled kernels for the Recommend pipeline's numeric work (numba, cached on disk).

The arrays in one request are small (a 3,862-item score row, about 550 candidates, a
150-item re-rank pool), so the NumPy versions of these steps spent most of their time in the
overhead of hundreds of small array calls. Each kernel here does one step's work in one
compiled loop. ``python -m benchmarks.kernel_bench`` compares them with the NumPy versions
and with a Cython build of the same loop.

Every kernel reproduces the NumPy arithmetic it replaces operation for operation (same
precision, same order, no fast-math, no fused multiply-add), so results are bit-for-bit the
same; the inner products stay in NumPy's BLAS calls, whose summation order a loop would not
reproduce. The callers are :mod:`feature_service.definitions` (features, retrieval top-k,
candidate merge), shared by the offline training-set builder and the gateway, and the gateway's
filter, order and re-rank stages.

Compilation: importing this module compiles each kernel for the argument types the pipeline
passes (or loads them from numba's on-disk cache), so no request waits for a compile: about
1.3 s per process with the cache (0.9 s of it importing numba), about 20 s once without it
(``benchmarks/results/kernel_bench.json``). The cache lives in ``__pycache__`` next to this
file when that is writable, otherwise in the user's cache directory (a read-only install), or
wherever ``NUMBA_CACHE_DIR`` points; numba writes cache files atomically and keys them by
source file and CPU, so processes that start together, or share a tree across machines, are
safe. With no writable location at all the kernels are compiled in memory by each process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.core.typing.templates import Signature

_log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])
Array = npt.NDArray[Any]


def _kernel(*signatures: str | Signature) -> Callable[[_F], _F]:
    """``numba.njit``, cached on disk where a location is writable, with ``signatures``
    compiled (or loaded from the cache) now.

    A call with other argument types (a read-only array, another dtype) still works: numba
    compiles that version on first use and caches it too. The serving path passes the
    signatures listed here (tests/unit/feature_service/test_kernels.py checks).
    """

    def decorate(function: _F) -> _F:
        try:
            dispatcher = numba.njit(cache=True, nogil=True)(function)
        except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
            _log.warning("numba cannot cache %s (%s): compiling in memory", function.__name__, exc)
            dispatcher = numba.njit(cache=False, nogil=True)(function)
        for signature in signatures:
            dispatcher.compile(signature)
        return cast(_F, dispatcher)

    return decorate


_READONLY_F32 = types.Array(types.float32, 1, "C", readonly=True)
_READONLY_I32 = types.Array(types.int32, 1, "C", readonly=True)
_I32 = types.Array(types.int32, 1, "C")


@_kernel(
    "int32[:, :](float32[:, ::1], int64, int32[::1], int64[::1])",
    "int32[:, :](float64[:, ::1], int64, int32[::1], int64[::1])",
)
def top_k_rows(
    scores: Array, k: int, exclude: Array, exclude_offsets: Array
) -> Array:  # pragma: no cover - compiled
    """Per row of ``scores``, the ``k`` largest columns, best first, ties by lower column.

    ``exclude[exclude_offsets[r]:exclude_offsets[r + 1]]`` are columns of row ``r`` scored as
    -inf (still returned, last, when fewer than ``k`` others remain). NaN scores rank last.
    """
    rows, n = scores.shape
    if len(exclude_offsets) != rows + 1:
        raise ValueError("exclude_offsets needs one entry per row plus one")
    for e in exclude:
        if e < 0 or e >= n:
            raise IndexError("an excluded column is outside the score matrix")
    k = max(min(k, n), 0)
    out = np.empty((rows, k), np.int32)
    if k == 0:
        return out
    negated = np.empty(n, scores.dtype)
    for r in range(rows):
        for i in range(n):
            negated[i] = -scores[r, i]
        for j in range(exclude_offsets[r], exclude_offsets[r + 1]):
            negated[exclude[j]] = np.inf
        # The k-th smallest negated score: columns strictly below it are in, ties at it are
        # taken by column until k. NaN sorts last, so a NaN threshold means every number is in
        # and NaN columns fill up by column.
        threshold = np.partition(negated, k - 1)[k - 1]
        nan_threshold = np.isnan(threshold)
        chosen = np.empty(k, np.int64)
        taken = 0
        for i in range(n):
            if negated[i] < threshold or (nan_threshold and not np.isnan(negated[i])):
                chosen[taken] = i
                taken += 1
        for i in range(n):
            if taken == k:
                break
            if negated[i] == threshold or (nan_threshold and np.isnan(negated[i])):
                chosen[taken] = i
                taken += 1
        if taken != k:
            raise RuntimeError("top_k_rows selected the wrong number of columns")
        values = np.empty(k, scores.dtype)
        for i in range(k):
            values[i] = negated[chosen[i]]
        # Stable: equal scores keep column order (the chosen list is in column order per value).
        order = np.argsort(values, kind="mergesort")
        for i in range(k):
            out[r, i] = chosen[order[i]]
    return out


@_kernel("int32[:](int32[::1])")
def first_occurrences(values: Array) -> Array:  # pragma: no cover - compiled
    """The distinct values in order of first occurrence."""
    n = len(values)
    out = np.empty(n, np.int32)
    if n == 0:
        return out
    low = values.min()
    span = np.int64(values.max()) - np.int64(low) + 1
    taken = 0
    if span <= 4 * n + 65_536:
        seen = np.zeros(span, np.bool_)
        for i in range(n):
            slot = np.int64(values[i]) - np.int64(low)
            if not seen[slot]:
                seen[slot] = True
                out[taken] = values[i]
                taken += 1
        return out[:taken]
    # A sparse range: sort, keep the first index of each run, put those back in input order.
    order = np.argsort(values, kind="mergesort")
    firsts = np.empty(n, np.int64)
    for i in range(n):
        if i == 0 or values[order[i]] != values[order[i - 1]]:
            firsts[taken] = order[i]
            taken += 1
    firsts = np.sort(firsts[:taken])
    for i in range(taken):
        out[i] = values[firsts[i]]
    return out[:taken]


@_kernel(
    *(
        types.Array(types.boolean, 1, "C")(values, members)
        for values in (_I32, _READONLY_I32)
        for members in (_I32, _READONLY_I32)
    )
)
def contained(values: Array, members: Array) -> Array:  # pragma: no cover - compiled
    """``values[i] in members`` for each ``i``, as ``np.isin(values, members)``.

    np.isin costs 15-30 µs on a request's few hundred positions (it sorts both arrays); a
    presence table over the values' range costs about 1 µs. Ranges too sparse for a table are
    searched in a sorted copy of ``members``.
    """
    n = len(values)
    out = np.zeros(n, np.bool_)
    if n == 0 or len(members) == 0:
        return out
    low = np.int64(values.min())
    span = np.int64(values.max()) - low + 1
    if span <= 4 * (n + len(members)) + 65_536:
        present = np.zeros(span, np.bool_)
        for member in members:
            slot = np.int64(member) - low
            if 0 <= slot < span:
                present[slot] = True
        for i in range(n):
            out[i] = present[np.int64(values[i]) - low]
        return out
    ordered = np.sort(members)
    at = np.searchsorted(ordered, values)
    for i in range(n):
        out[i] = at[i] < len(ordered) and ordered[at[i]] == values[i]
    return out


@_kernel(
    "int64[:](int32[::1], int32[::1], boolean[::1], boolean)",
    # read-only positions: candidates the gateway's retrieval cache shares between requests
    types.int64[:](_READONLY_I32, _I32, types.Array(types.boolean, 1, "C"), types.boolean),
)
def keep_allowed(
    positions: Array, blocked: Array, available: Array, check_available: bool
) -> Array:  # pragma: no cover - compiled
    """Indices of the ``positions`` not in ``blocked`` (and ``available`` when checked)."""
    n = len(positions)
    keep = np.empty(n, np.int64)
    if n == 0:
        return keep
    low = np.int64(positions.min())
    if check_available and (low < 0 or positions.max() >= len(available)):
        raise IndexError("a candidate position is outside the availability array")
    is_blocked = np.zeros(np.int64(positions.max()) - low + 1, np.bool_)
    for b in blocked:
        slot = np.int64(b) - low
        if 0 <= slot < len(is_blocked):
            is_blocked[slot] = True
    taken = 0
    for i in range(n):
        if is_blocked[np.int64(positions[i]) - low]:
            continue
        if check_available and not available[positions[i]]:
            continue
        keep[taken] = i
        taken += 1
    return keep[:taken]


@_kernel(
    "void(float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[::1], int16[::1],"
    " int32[::1], int32[::1], float32[::1], float64[::1], float32[::1], float32, float64,"
    " float32[::1], int64, int64, int64, float64, float64)"
)
def fill_features(
    out: Array,
    shared: Array,
    log_price: Array,
    log_popularity: Array,
    available: Array,
    category: Array,
    candidates: Array,
    owned: Array,
    owned_log_counts: Array,
    owned_last: Array,
    affinity: Array,
    mean_log_price: np.float32,
    now: float,
    retrieval_scores: Array,
    item_start: int,
    category_start: int,
    cross_start: int,
    seconds_per_day: float,
    max_days: float,
) -> None:  # pragma: no cover - compiled
    """Writes the rows of ``feature_service.definitions.assemble_features`` into ``out``.

    ``shared`` is the user and context row; the item and cross columns follow the definitions
    module's formulas in the same float32/float64 steps, so the values are the NumPy ones.
    """
    n_owned = len(owned)
    width = len(shared)
    if out.shape[0] != len(candidates) or out.shape[1] != width:
        raise ValueError("the output matrix does not match the candidates and the shared row")
    if len(retrieval_scores) != len(candidates):
        raise ValueError("one retrieval score per candidate is needed")
    n_items = len(category)
    if len(log_price) != n_items or len(log_popularity) != n_items or len(available) != n_items:
        raise ValueError("the item columns differ in length")
    for c in candidates:
        if c < 0 or c >= n_items:
            raise IndexError("a candidate position is outside the item arrays")
        if category[c] < 0 or category[c] >= len(affinity):
            raise IndexError("an item category is outside the affinity vector")
    if len(owned_log_counts) != n_owned or len(owned_last) != n_owned:
        raise ValueError("the owned-item columns differ in length")
    for i in range(len(candidates)):
        c = candidates[i]
        for j in range(width):
            out[i, j] = shared[j]
        cat = category[c]
        out[i, item_start] = log_price[c]
        out[i, item_start + 1] = log_popularity[c]
        out[i, item_start + 2] = available[c]
        out[i, category_start + cat] = 1.0
        bought = False
        log_count = np.float32(0.0)
        last = -np.inf
        price_gap = np.float32(0.0)
        if n_owned:
            index = min(np.searchsorted(owned, c), n_owned - 1)
            if owned[index] == c:
                bought = True
                log_count = owned_log_counts[index]
                last = owned_last[index]
            price_gap = log_price[c] - mean_log_price
        days = (now - last) / seconds_per_day
        days = min(max(days, 0.0), max_days) if np.isfinite(days) else max_days
        out[i, cross_start] = affinity[cat]
        out[i, cross_start + 1] = price_gap
        out[i, cross_start + 2] = log_count
        out[i, cross_start + 3] = 1.0 if bought else 0.0
        out[i, cross_start + 4] = days
        out[i, cross_start + 5] = retrieval_scores[i]


@_kernel("int64[:](float32[::1])", types.int64[:](_READONLY_F32))
def order_by_score(scores: Array) -> Array:  # pragma: no cover - compiled
    """``np.argsort(-scores, kind="stable")``: best first, ties in input order, NaN last."""
    negated = np.empty(len(scores), np.float32)
    for i in range(len(scores)):
        negated[i] = -scores[i]
    return np.argsort(negated, kind="mergesort")


@_kernel(
    "int64[:](float32[::1], float32[:, ::1], int16[::1], boolean, float64, int64)",
    "int64[:](float32[::1], float64[:, ::1], int16[::1], boolean, float64, int64)",
)
def greedy_mmr(
    scores: Array,
    similarity: Array,
    categories: Array,
    use_similarity: bool,
    weight: float,
    count: int,
) -> Array:  # pragma: no cover - compiled
    """Greedy maximal marginal relevance over a pool sorted by score; the picked indices.

    Relevance is the score min-max scaled within the pool. Similarity is
    ``similarity[i, j]`` when ``use_similarity``, else 1 for two items of one category.
    Each pick maximises ``min(base_i, min over picked j of (base_i - weight * sim_ij))``,
    ``base = (1 - weight) * relevance``, the first on ties; the arithmetic (float64, NaN
    propagating like ``np.minimum`` and ``np.argmax``) is gateway.stages.rerank's before.
    """
    n = len(scores)
    if use_similarity and (similarity.shape[0] != n or similarity.shape[1] != n):
        raise ValueError("the similarity matrix must be pool x pool")
    if not use_similarity and len(categories) != n:
        raise ValueError("one category per pool item is needed")
    low = np.inf
    high = -np.inf
    has_nan = False
    for i in range(n):
        s = float(scores[i])
        if np.isnan(s):
            has_nan = True
        elif s < low:
            low = s
        if s > high:
            high = s
    spread = np.nan if has_nan else high - low
    base = np.empty(n, np.float64)
    for i in range(n):
        relevance = (float(scores[i]) - low) / spread if spread > 0 else 1.0
        base[i] = (1.0 - weight) * relevance
    gain = base.copy()
    picks = min(count, n)
    order = np.empty(max(picks, 0), np.int64)
    for p in range(picks):
        best = 0
        best_gain = gain[0]
        if not np.isnan(best_gain):
            for i in range(1, n):
                g = gain[i]
                if np.isnan(g):
                    best = i
                    break
                if g > best_gain:
                    best = i
                    best_gain = g
        order[p] = best
        for i in range(n):
            if use_similarity:
                sim = float(similarity[best, i])
            else:
                sim = 1.0 if categories[best] == categories[i] else 0.0
            penalised = base[i] - weight * sim
            if penalised < gain[i] or np.isnan(penalised):
                gain[i] = penalised
        gain[best] = -np.inf
    return order


@_kernel("int64[:](int16[::1], int64)")
def first_per_category(categories: Array, limit: int) -> Array:  # pragma: no cover
    """Indices of the items among the first ``limit`` of their category, in list order."""
    n = len(categories)
    keep = np.empty(n, np.int64)
    if n == 0:
        return keep
    low = np.int64(categories.min())
    seen = np.zeros(np.int64(categories.max()) - low + 1, np.int64)
    taken = 0
    for i in range(n):
        slot = np.int64(categories[i]) - low
        if seen[slot] < limit:
            keep[taken] = i
            taken += 1
        seen[slot] += 1
    return keep[:taken]


@_kernel(
    "int64(int32[::1], boolean[::1], int32[::1], int32[::1], float32[::1], int32[::1],"
    " float32[::1], int64, float64, float64)"
)
def best_discovery_picks(
    head: Array,
    is_owned: Array,
    picks: Array,
    ranker_positions: Array,
    ranker_scores: Array,
    discovery_positions: Array,
    discovery_scores: Array,
    room: int,
    total: float,
    weight: float,
) -> int:  # pragma: no cover - compiled
    """How many of ``picks`` MIXED lists: the k in 0..len(picks) whose list has the best value
    (the first on a tie), as ``feature_service.surfaces.discovery_slots_for`` defines it.

    k picks take the ``room`` free slots, then push out the last owned items of ``head``. A
    list's value is the ranker's probabilities of its items over ``total`` plus ``weight`` x
    the probability, by the discovery head (items independent), that a listed new item sells.
    An item a head did not score counts 0 there.
    """
    n_head, n_picks = len(head), len(picks)
    listed = 0.0
    no_new_hit = 1.0
    owned_p = np.empty(n_head, np.float64)
    n_owned = 0
    for i in range(n_head):
        p = 0.0
        for j in range(len(ranker_positions)):
            if ranker_positions[j] == head[i]:
                p = float(ranker_scores[j])
                break
        listed += p
        if is_owned[i]:
            owned_p[n_owned] = p
            n_owned += 1
        else:
            for j in range(len(discovery_positions)):
                if discovery_positions[j] == head[i]:
                    no_new_hit *= 1.0 - float(discovery_scores[j])
                    break
    # given_up[d]: what the last d owned items of the head were worth to the ranker.
    given_up = np.zeros(n_owned + 1, np.float64)
    for d in range(1, n_owned + 1):
        given_up[d] = given_up[d - 1] + owned_p[n_owned - d]
    best_k, best_value = 0, -np.inf
    taken, misses = 0.0, 1.0
    for k in range(n_picks + 1):
        if k > 0:
            pick = picks[k - 1]
            for j in range(len(ranker_positions)):
                if ranker_positions[j] == pick:
                    taken += float(ranker_scores[j])
                    break
            for j in range(len(discovery_positions)):
                if discovery_positions[j] == pick:
                    misses *= 1.0 - float(discovery_scores[j])
                    break
        drops = min(max(0, k - room), n_owned)
        expected = listed - given_up[drops] + taken
        value = expected / total + weight * (1.0 - no_new_hit * misses)
        if value > best_value:
            best_k, best_value = k, value
    return best_k
