"""Non-greedy sampling at close to greedy's cost, with llama.cpp's chain's distribution.

llama.cpp's sampler chain starts by copying every logit into a candidate array (262,144
of them on Gemma: hundreds of µs a token) before top-k keeps 40. Here numpy narrows them
to the few dozen logits that can be in the top k, in about one pass over the logits:
viewed as a 64-row matrix, the column maxima (an elementwise maximum of contiguous rows,
bandwidth bound like argmax) bound the k-th largest logit from below, and only the
columns that reach that bound can hold a top-k logit. Logit bias and penalties are
applied first to the few tokens they touch, as the chain does. The candidates then go
through llama.cpp's own top-k / typical / top-p / min-p / temperature / seeded-draw
samplers (``add_truncation``, shared with the full chain): top-k keeps the same k
logits, sorted the same way, so the distribution is the chain's bit for bit and, for the
same seed, so are the tokens (tied logits at the top-k boundary aside, which llama.cpp
orders arbitrarily either way). ``choose_batch`` picks for a (B, n_vocab) array of
logits rows, with one numpy call for every row's column maxima and a few for their
thresholds.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.backend.sampling import SamplerSettings, add_truncation

__all__ = ["FastSampler", "TopKCandidates", "choose_batch", "fast_path_applies"]

_ROWS = 64  # the logits are viewed as 64 rows; one column maximum per 64 tokens (measured)
_GROUPS = 64  # the fewest groups of columns whose maxima give the threshold
_INF = np.float32(np.inf)
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


def fast_path_applies(settings: SamplerSettings, n_vocab: int) -> bool:
    """Whether ``FastSampler`` computes what ``build_sampler``'s chain would, faster.

    Greedy (with any bias or penalties), and top-k sampling without mirostat for a top-k
    of at most a 64th of the vocabulary. ``FastSampler`` also takes ``top_k=0`` (no
    limit) or a larger k, exactly but at the chain's cost (every logit is a candidate);
    mirostat needs llama.cpp's chain.
    """
    if settings.temperature == 0.0:
        return True
    return settings.mirostat_mode == 0 and 0 < settings.top_k <= n_vocab // _ROWS


class _Layout:
    """The 64-row view of ``n_vocab`` logits: its columns, and the tail past the rows."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.rows = _ROWS
        self.columns = n_vocab // _ROWS
        self.main = _ROWS * self.columns
        self.tail = n_vocab - self.main  # fewer than 64 tokens: always candidates
        ids = np.arange(n_vocab, dtype=np.int32)
        ids.flags.writeable = False
        self.ids = ids

    def groups(self, k: int) -> int:
        """How many groups of columns give the threshold for ``k`` (0: the columns).

        The k-th largest of 2k to 4k group maxima is cheap to find and loose enough
        that about k columns reach it.
        """
        groups = max(_GROUPS, 1 << (2 * k - 1).bit_length())
        return groups if 2 * groups <= self.columns else 0


@lru_cache(maxsize=4)
def _layout(n_vocab: int) -> _Layout:
    return _Layout(n_vocab)


class _Maxima:
    """Buffers for the column maxima of ``batch`` rows and their group maxima."""

    def __init__(self, layout: _Layout, batch: int, groups: int) -> None:
        columns = layout.columns
        if groups:
            width = -(-columns // groups)  # columns per group, the last padded with -inf
            padded = np.full((batch, width * groups), -np.inf, dtype=np.float32)
            self.grid: Any = padded.reshape(batch, width, groups)
            self.groups = np.empty((batch, groups), dtype=np.float32)
        else:
            padded = np.empty((batch, columns), dtype=np.float32)
            self.grid = None
            self.groups = np.empty((batch, columns), dtype=np.float32)
        self.columns: Any = padded[:, :columns]

    def thresholds(self, kths: Any) -> Any:
        """The group maxima's ``kths``-th smallest per row (after ``columns`` is filled)."""
        groups = self.groups
        if self.grid is not None:
            np.maximum.reduce(self.grid, axis=1, out=groups)
        else:
            groups[:] = self.columns
        unique = sorted(set(kths))
        groups.partition(unique if len(unique) > 1 else unique[0], axis=1)
        return groups[np.arange(groups.shape[0]), kths]


class TopKCandidates:
    """Writes a few dozen candidates that hold the ``k`` largest logits of a row.

    Column maxima over a 64-row view of the logits (one read of them); the k-th largest
    of their group maxima (disjoint) is a value ``t`` that at least k logits reach, so
    every top-k logit is at least ``t`` and lies in a column whose maximum is. The logits
    of those columns (about k columns of 64) that reach ``t``, and the tail past the 64
    rows, are the candidates; llama.cpp's top-k then sorts out the k, as it would from
    every logit. ``k`` = 0 (no limit) or above the number of columns: every logit.

    The candidates' ids are positions (cheaper to write than token ids); ``token`` turns
    one back into a token id.
    """

    def __init__(self, n_vocab: int, k: int) -> None:
        self.layout = layout = _layout(n_vocab)
        self.k = k
        self.n_vocab = n_vocab
        self.exhaustive = not 0 < k <= layout.columns
        self.n_groups = 0 if self.exhaustive else layout.groups(k)
        maxima = _Maxima(layout, 1, self.n_groups)
        self._kth = maxima.groups.shape[1] - k
        # one row's views of the buffers (``fill``); ``choose_batch`` has its own
        self._columns = maxima.columns[0]
        self._groups = maxima.groups[0]
        self._grid = None if maxima.grid is None else maxima.grid[0]
        self._source: Any = None  # the logits array last seen, and its 64-row view
        self._rows: Any = None
        self._cols: Any = None  # the last fill's columns (None: every logit, in order)
        self._ncols = 0
        self._in_block = 0

    def fill(self, logits: Any, ids: Any, values: Any) -> int:
        """Write the candidates' positions and logits into ``ids`` and ``values`` (each
        of ``n_vocab`` entries); returns how many."""
        if self.exhaustive:
            return self.everything(logits, ids, values)
        if logits is not self._source:  # the model's view is the same array every token
            self._source = logits
            self._rows = logits[: self.layout.main].reshape(self.layout.rows, self.layout.columns)
        rows, columns, groups, kth = self._rows, self._columns, self._groups, self._kth
        np.maximum.reduce(rows, axis=0, out=columns)
        if self._grid is not None:
            np.maximum.reduce(self._grid, axis=0, out=groups)
        else:
            groups[:] = columns
        groups.partition(kth)
        return self.collect(logits, rows, columns, groups[kth], ids, values)

    def collect(
        self, logits: Any, rows: Any, columns: Any, threshold: Any, ids: Any, values: Any
    ) -> int:
        """``fill``'s second half, given the column maxima and the threshold."""
        if not threshold > -_INF:
            return self.masked(threshold, logits, rows, columns, ids, values)
        cols = (columns >= threshold).nonzero()[0]
        block = rows.take(cols, axis=1)  # (64, about k)
        found = np.flatnonzero(block >= threshold)
        count = found.size
        values[:count] = block.ravel().take(found)
        ids[:count] = found
        return self._remember(cols, block.size, logits, ids, values, count)

    def masked(
        self, threshold: Any, logits: Any, rows: Any, columns: Any, ids: Any, values: Any
    ) -> int:
        """Fewer than k groups with a finite logit (a mask), or NaN at the threshold.

        NaN: every logit, as the chain takes them (a column whose maximum is NaN is
        otherwise left out: the model's NaN logits are not drawn). A mask: the columns with
        a finite logit, whole, so that top-k keeps k logits (some -inf, at p = 0) as the
        chain does.
        """
        if threshold != threshold:
            return self.everything(logits, ids, values)
        cols = (columns > -_INF).nonzero()[0]
        if not cols.size:
            return self.everything(logits, ids, values)
        block = rows.take(cols, axis=1).ravel()
        count = block.size
        values[:count] = block
        ids[:count] = self.layout.ids[:count]
        return self._remember(cols, count, logits, ids, values, count)

    def _remember(
        self, cols: Any, in_block: int, logits: Any, ids: Any, values: Any, count: int
    ) -> int:
        """Keep what ``token`` needs; add the tail (positions past the block's)."""
        self._cols, self._ncols, self._in_block = cols, cols.size, in_block
        layout = self.layout
        tail = layout.tail
        if tail:
            values[count : count + tail] = logits[layout.main :]
            ids[count : count + tail] = layout.ids[in_block : in_block + tail]
            count += tail
        return count

    def token(self, position: int) -> int:
        """The token id of the last fill's candidate at ``position``."""
        cols = self._cols
        if cols is None:
            return position
        if position >= self._in_block:  # the tail, past the 64 rows
            return self.layout.main + position - self._in_block
        row, within = divmod(position, self._ncols)
        return row * self.layout.columns + int(cols[within])

    def everything(self, logits: Any, ids: Any, values: Any) -> int:
        values[: self.n_vocab] = logits
        ids[: self.n_vocab] = self.layout.ids
        self._cols = None
        return self.n_vocab


class _Adjustments:
    """Logit bias and repetition penalties, applied in place to the tokens they touch.

    As llama.cpp's ``logit_bias`` then ``penalties`` samplers, in float32: bias added in
    the order given; then, for a token seen ``count`` times in the last ``last_n`` accepted
    tokens, ``logit *= repeat`` if ``logit <= 0`` else ``logit /= repeat``, then
    ``logit -= count * frequency + presence``.
    """

    def __init__(self, settings: SamplerSettings, last_n: int) -> None:
        f32 = np.float32
        self._repeat = f32(settings.repeat_penalty)
        self._frequency = f32(settings.frequency_penalty)
        self._presence = f32(settings.presence_penalty)
        last_n = max(last_n, 0)
        self._tracking = last_n > 0  # llama.cpp's accept records nothing for last_n == 0
        self._window: deque[int] = deque(maxlen=last_n or None)
        self._counts: dict[int, int] = {}
        self.penalising = self._tracking and not (
            self._repeat == 1.0 and self._frequency == 0.0 and self._presence == 0.0
        )
        # one layer per repeat of a token in logit_bias (42 and "42"), applied in order
        layers: list[dict[int, float]] = []
        for token, bias in settings.logit_bias:
            layer = next((each for each in layers if token not in each), None)
            if layer is None:
                layer = {}
                layers.append(layer)
            layer[token] = bias
        self._bias_tokens = list(dict.fromkeys(token for token, _ in settings.logit_bias))
        self._bias_layers = [
            (
                np.array([self._bias_tokens.index(t) for t in layer], dtype=np.intp),
                np.array(list(layer.values()), dtype=np.float32),
            )
            for layer in layers
        ]
        self.active = bool(self._bias_tokens) or self.penalising

    def accept(self, token: int) -> None:
        if not self._tracking:
            return
        window, counts = self._window, self._counts
        if len(window) == window.maxlen:
            old = window[0]
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        window.append(token)
        counts[token] = counts.get(token, 0) + 1

    def apply(self, logits: Any) -> tuple[Any, Any]:
        """Adjust ``logits`` in place; returns (ids, saved values) to restore them."""
        counts = self._counts if self.penalising else {}
        tokens = self._bias_tokens
        if counts:
            extra = [token for token in counts if token not in tokens] if tokens else counts
            tokens = [*tokens, *extra]
        ids = np.array(tokens, dtype=np.intp)
        saved = logits[ids]
        values = saved.copy()
        for positions, biases in self._bias_layers:
            values[positions] += biases
        if counts:
            seen = np.array([counts.get(token, 0) for token in tokens], dtype=np.float32)
            hit = seen > 0
            hit_values = values[hit]
            penalised = np.where(
                hit_values <= 0, hit_values * self._repeat, hit_values / self._repeat
            )
            hit_counts = seen[hit]
            penalised -= hit_counts * self._frequency + self._presence
            values[hit] = penalised
        logits[ids] = values
        return ids, saved


class FastSampler:
    """Picks tokens as ``build_sampler``'s chain would, at close to greedy's cost.

    For any settings without mirostat (at the chain's cost where ``fast_path_applies``
    is false). ``sample`` picks from a logits array (the model's view of llama.cpp's
    buffer: bias and penalties are written into it for the pick and restored after);
    ``accept`` records the token kept, for the penalties (the chain does both in
    ``llama_sampler_sample``). ``choose_batch`` picks for many samplers at once.
    ``close`` frees the native samplers.
    """

    def __init__(self, settings: SamplerSettings, *, n_vocab: int, seed: int, last_n: int) -> None:
        import llama_cpp as lib

        if settings.temperature != 0.0 and settings.mirostat_mode != 0:
            raise ConfigurationError("mirostat needs llama.cpp's full sampler chain")
        assert ctypes.sizeof(lib.llama_token_data) == _TOKEN_DATA.itemsize
        self._lib = lib
        self.n_vocab = n_vocab
        self._adjust = _Adjustments(settings, last_n)
        self._chain: Any = None
        self._greedy = settings.temperature == 0.0
        if self._greedy:
            return
        self._candidates = TopKCandidates(n_vocab, settings.top_k)
        # room for every logit (pages are only touched as far as candidates are written)
        self._buffer = np.empty(n_vocab, dtype=_TOKEN_DATA)
        self._ids, self._values = self._buffer["id"], self._buffer["logit"]
        self._array = lib.llama_token_data_array(
            data=ctypes.cast(self._buffer.ctypes.data, lib.llama_token_data_p),
            size=0,
            selected=-1,
            sorted=False,
        )
        self._pointer = ctypes.pointer(self._array)
        self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add_truncation(self._chain, settings, seed)
        self._apply = lib.llama_sampler_apply

    def sample(self, logits: Any) -> int:
        """The next token from ``logits`` (not yet accepted: call ``accept`` with the kept one)."""
        adjust = self._adjust
        if not adjust.active:
            return self._pick(logits)
        ids, saved = adjust.apply(logits)
        try:
            return self._pick(logits)
        finally:
            logits[ids] = saved

    def accept(self, token: int) -> None:
        self._adjust.accept(token)

    def choose(self, logits: Any) -> int:
        """``sample`` then ``accept``: the generation loop's one call per token."""
        token = self.sample(logits)
        self._adjust.accept(token)
        return token

    def distribution(self, logits: Any) -> dict[int, float]:
        """The probability of each token that can be drawn next (draws once, as a pick does)."""
        adjust = self._adjust
        saved: tuple[Any, Any] | None = adjust.apply(logits) if adjust.active else None
        try:
            if self._greedy:
                return {int(logits.argmax()): 1.0}
            self._pick(logits)
            survivors = self._buffer[: self._array.size]
            token = self._candidates.token
            return {
                token(position): p
                for position, p in zip(
                    survivors["id"].tolist(), survivors["p"].tolist(), strict=True
                )
            }
        finally:
            if saved is not None:
                logits[saved[0]] = saved[1]

    def _pick(self, logits: Any) -> int:
        if self._greedy:
            return int(logits.argmax())
        return self._draw(self._candidates.fill(logits, self._ids, self._values))

    def _draw(self, count: int) -> int:
        """Run the chain over the first ``count`` candidates in the buffer; the token drawn."""
        array = self._array
        array.size = count
        array.selected = -1
        array.sorted = False
        self._apply(self._chain, self._pointer)
        return self._candidates.token(int(array.data[array.selected].id))

    def close(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None


_BATCH = threading.local()  # per thread: the buffers of the last few batch shapes


def choose_batch(samplers: Sequence[FastSampler], logits: Any, *, accept: bool = True) -> list[int]:
    """``samplers[i].choose(logits[i])`` for every row of a (B, n_vocab) float32 array
    (``accept=False``: ``sample``, for a loop that may replace a pick before ``accept``).

    The same tokens as those calls one by one (each sampler keeps its own seeded draw and
    history). The column maxima of every row are one numpy call (one pass over the
    array), their thresholds another few; then each row's columns and candidates, and its
    chain over them. Rows of greedy samplers, and of samplers without a usable top-k, pick
    alone (give greedy rows to ``argmax(axis=1)`` instead, and leave them out of
    ``logits``: a row left out costs nothing). Bias and penalties are written into
    ``logits`` for the picks and restored after.
    """
    if logits.ndim != 2 or logits.shape[0] != len(samplers):
        raise ConfigurationError(
            f"choose_batch needs one logits row per sampler: {len(samplers)} samplers, "
            f"logits of shape {logits.shape}"
        )
    if not samplers:
        return []
    n_vocab = logits.shape[1]
    if any(sampler.n_vocab != n_vocab for sampler in samplers):
        raise ConfigurationError(f"choose_batch: every sampler needs n_vocab == {n_vocab}")
    restore: list[tuple[int, Any, Any]] = []
    for row, sampler in enumerate(samplers):
        if sampler._adjust.active:
            restore.append((row, *sampler._adjust.apply(logits[row])))
    try:
        picks = _pick_batch(samplers, logits)
    finally:
        for row, ids, saved in restore:
            logits[row, ids] = saved
    if accept:
        for sampler, token in zip(samplers, picks, strict=True):
            sampler.accept(token)
    return picks


def _pick_batch(samplers: Sequence[FastSampler], logits: Any) -> list[int]:
    picks = [0] * len(samplers)
    batched: list[int] = []  # rows for the column trick; the others pick alone
    for row, sampler in enumerate(samplers):
        if sampler._greedy or sampler._candidates.exhaustive:
            picks[row] = sampler._pick(logits[row])
        else:
            batched.append(row)
    if not batched:
        return picks
    layout = _layout(logits.shape[1])
    columns = layout.columns
    count = len(batched)
    n_groups = [samplers[row]._candidates.n_groups for row in batched]
    groups = 0 if 0 in n_groups else max(n_groups)
    key = (layout.n_vocab, count, groups)
    cache: dict[tuple[int, int, int], _Maxima] = _BATCH.__dict__.setdefault("maxima", {})
    maxima = cache.get(key)
    if maxima is None:
        if len(cache) >= 16:
            cache.clear()
        maxima = cache[key] = _Maxima(layout, count, groups)
    main = logits[:, : layout.main]
    cube = main.reshape(len(samplers), layout.rows, columns)  # a view: rows are contiguous
    if count == len(samplers):  # every row: one call over the (B, 64, columns) view
        np.maximum.reduce(cube, axis=1, out=maxima.columns)
    else:
        for index, row in enumerate(batched):
            np.maximum.reduce(cube[row], axis=0, out=maxima.columns[index])
    width = maxima.groups.shape[1]
    thresholds = maxima.thresholds([width - samplers[row]._candidates.k for row in batched])
    for index, row in enumerate(batched):
        sampler = samplers[row]
        written = sampler._candidates.collect(
            logits[row],
            cube[row],
            maxima.columns[index],
            thresholds[index],
            sampler._ids,
            sampler._values,
        )
        picks[row] = sampler._draw(written)
    return picks
