"""The fast sampler picks as llama.cpp's sampler chain does, without copying every logit.

The distribution checks read the probabilities llama.cpp's chain leaves on a real
``llama_token_data_array`` (its ``dist`` sampler writes each survivor's probability) and
compare them with the fast sampler's, on synthetic logits of Gemma's vocabulary size and
of an odd size, with history for the penalties and a logit bias. Both run the same native
samplers after top-k with the same seed, so probabilities and tokens must be equal, not
merely close. End to end, a tiny model with a 40,000-token vocabulary (above the size
where the loop switches to the fast sampler) gives the same texts on both paths.
"""

from __future__ import annotations

import ctypes
import json
import string
from pathlib import Path
from typing import Any

import llama_cpp as lib
import numpy as np
import pytest

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.backend import generation
from serapeum.llama_cpp.backend.fast_sampler import (
    FastSampler,
    TopKCandidates,
    choose_batch,
    fast_path_applies,
)
from serapeum.llama_cpp.backend.sampling import SamplerSettings, build_sampler
from serapeum.llama_cpp.testing import SPECIAL_TOKENS, TinyModelSpec, Vocabulary, build_tiny_gguf

GEMMA_VOCAB = 262_144
ODD_VOCAB = 20_011  # 64 rows of 312 columns and a tail of 43 tokens
LAST_N = 64
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

SETTINGS = {
    "seed defaults (0.75, top-p 0.9)": {"temperature": 0.75, "top_p": 0.9},
    "create_completion defaults": {"temperature": 0.8},
    "top-k 1": {"temperature": 1.0, "top_k": 1},
    "top-k 64, nothing else": {"temperature": 1.0, "top_k": 64, "top_p": 1.0, "min_p": 0.0},
    "top-k 200, min-p": {"temperature": 1.3, "top_k": 200, "top_p": 1.0, "min_p": 0.2},
    "typical": {"temperature": 0.5, "top_k": 65, "typical_p": 0.8},
    "seed defaults, top-p 0.95": {"temperature": 0.75, "top_p": 0.95},
    "no top-k (every logit)": {"temperature": 0.8, "top_k": 0, "min_p": 0.1},
    "top-k 400 (above 20,011's columns)": {"temperature": 0.7, "top_k": 400},
    "penalties and bias": {
        "temperature": 0.9,
        "repeat_penalty": 1.3,
        "frequency_penalty": 0.2,
        "presence_penalty": 0.3,
        "logit_bias": {5: 3.0, "5": 1.0, 7: -100.0, 11: 25.0},
    },
}


def synthetic_logits(rng: np.random.Generator, n_vocab: int, *, masked: bool = False) -> Any:
    """Logits shaped like a language model's: a broad mass and a few strong candidates."""
    logits = (rng.standard_normal(n_vocab) * 3.0).astype(np.float32)
    logits[rng.integers(0, n_vocab, 8)] += rng.uniform(6.0, 14.0, 8).astype(np.float32)
    if masked:  # a constraint left fewer tokens than top_k
        logits[rng.permutation(n_vocab)[: n_vocab - 25]] = -np.inf
    return logits


def chain_pick(chain: Any, logits: Any, *, read: bool = True) -> tuple[dict[int, float], int]:
    """Apply llama.cpp's chain to every logit: (probability of each survivor, the draw)."""
    data = np.zeros(logits.size, dtype=TOKEN_DATA)
    data["id"] = np.arange(logits.size)
    data["logit"] = logits
    array = lib.llama_token_data_array(
        data=ctypes.cast(data.ctypes.data, lib.llama_token_data_p),
        size=logits.size,
        selected=-1,
        sorted=False,
    )
    lib.llama_sampler_apply(chain, ctypes.byref(array))
    assert ctypes.cast(array.data, ctypes.c_void_p).value == data.ctypes.data
    survivors = data[: array.size]
    probabilities = (
        dict(zip(survivors["id"].tolist(), survivors["p"].tolist(), strict=True)) if read else {}
    )
    return probabilities, int(survivors["id"][array.selected])


def pair(settings: SamplerSettings, n_vocab: int, seed: int) -> tuple[FastSampler, Any]:
    fast = FastSampler(settings, n_vocab=n_vocab, seed=seed, last_n=LAST_N)
    chain = build_sampler(settings, vocab=None, n_vocab=n_vocab, seed=seed, last_n=LAST_N)
    return fast, chain


# -- top-k candidates (the column trick) -------------------------------------------------
def candidates(n_vocab: int, k: int, logits: Any) -> tuple[Any, Any]:
    """(token ids, logits) of the candidates ``TopKCandidates`` writes for ``logits``."""
    positions = np.empty(n_vocab, dtype=np.int32)
    values = np.empty(n_vocab, dtype=np.float32)
    top = TopKCandidates(n_vocab, k)
    count = top.fill(logits, positions, values)
    ids = np.array([top.token(int(p)) for p in positions[:count]], dtype=np.int64)
    return ids, values[:count]


def assert_hold_the_top_k(logits: Any, k: int, ids: Any, values: Any) -> None:
    assert values.tolist() == logits[ids].tolist()  # each candidate's own logit
    assert len(set(ids.tolist())) == ids.size  # no token twice
    top = np.sort(logits)[::-1][: k or logits.size]
    assert np.sort(values)[::-1][: top.size].tolist() == top.tolist()


@pytest.mark.parametrize("n_vocab", [GEMMA_VOCAB, ODD_VOCAB, 5_000, 64 * 40 + 7])
@pytest.mark.parametrize("k", [1, 40, 64, 65, 128])
def test_candidates_hold_the_top_k(n_vocab: int, k: int) -> None:
    rng = np.random.default_rng(n_vocab + k)
    for masked in (False, True):
        logits = synthetic_logits(rng, n_vocab, masked=masked)
        ids, values = candidates(n_vocab, k, logits)
        assert_hold_the_top_k(logits, k, ids, values)
        if not masked and k <= n_vocab // 64:
            assert ids.size <= 4 * k + 64  # a few dozen, not the vocabulary


@pytest.mark.parametrize("seed", range(6))
def test_candidates_of_random_logits(seed: int) -> None:
    """Uniform, heavy-tailed and sorted logits: whatever their layout, the top k are in."""
    rng = np.random.default_rng(seed)
    n_vocab = int(rng.integers(4_000, 70_000))
    k = int(rng.integers(1, n_vocab // 64 + 1))
    for logits in (
        rng.uniform(-5, 5, n_vocab).astype(np.float32),
        rng.standard_cauchy(n_vocab).astype(np.float32),
        np.sort(rng.standard_normal(n_vocab)).astype(np.float32),  # the top in the tail
        np.sort(rng.standard_normal(n_vocab))[::-1].astype(np.float32),  # all in row 0
    ):
        ids, values = candidates(n_vocab, k, logits)
        assert_hold_the_top_k(logits, k, ids, values)


def test_candidates_with_ties_at_the_boundary() -> None:
    # small integers: hundreds of logits equal to the k-th largest, across many columns
    rng = np.random.default_rng(5)
    for n_vocab in (GEMMA_VOCAB, ODD_VOCAB):
        logits = rng.integers(0, 30, n_vocab).astype(np.float32)
        for k in (1, 40, 200):
            ids, values = candidates(n_vocab, k, logits)
            assert_hold_the_top_k(logits, k, ids, values)
            # every logit equal to the k-th largest is a candidate: llama.cpp picks among them
            assert ids.size >= np.count_nonzero(logits >= np.sort(logits)[-k])


def test_candidates_when_every_logit_is_equal_or_minus_infinity() -> None:
    # every column ties at the threshold: all are kept (correct; as slow as the chain)
    ids, _ = candidates(GEMMA_VOCAB, 40, np.zeros(GEMMA_VOCAB, dtype=np.float32))
    assert sorted(ids.tolist()) == list(range(GEMMA_VOCAB))
    ids, _ = candidates(GEMMA_VOCAB, 40, np.full(GEMMA_VOCAB, -np.inf, dtype=np.float32))
    assert ids.size == GEMMA_VOCAB  # as the chain: every logit
    logits = np.zeros(GEMMA_VOCAB, dtype=np.float32)
    logits[123] = np.nan
    ids, _ = candidates(GEMMA_VOCAB, 40, logits)
    assert 123 not in ids.tolist()  # a NaN in a column: that column is never a candidate
    logits[::2] = np.nan
    ids, _ = candidates(GEMMA_VOCAB, 40, logits)
    assert ids.size == GEMMA_VOCAB  # NaN at the threshold: every logit, as the chain's


@pytest.mark.parametrize("k", [0, ODD_VOCAB // 64 + 1, ODD_VOCAB])
def test_no_top_k_or_more_than_the_columns_takes_every_logit(k: int) -> None:
    """top_k = 0 (no limit) or k above the number of columns: every logit, in order."""
    logits = synthetic_logits(np.random.default_rng(k), ODD_VOCAB)
    assert TopKCandidates(ODD_VOCAB, k).exhaustive
    ids, values = candidates(ODD_VOCAB, k, logits)
    assert ids.tolist() == list(range(ODD_VOCAB))
    assert values.tolist() == logits.tolist()


# -- same distribution, same tokens as the chain ----------------------------------------
@pytest.mark.parametrize("n_vocab", [GEMMA_VOCAB, ODD_VOCAB])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_distribution_equals_the_chains(name: str, n_vocab: int) -> None:
    settings = SamplerSettings(**SETTINGS[name])
    rng = np.random.default_rng(len(name) + n_vocab)
    fast, chain = pair(settings, n_vocab, seed=1234)
    try:
        for step in range(24):
            logits = synthetic_logits(rng, n_vocab, masked=step % 8 == 5)
            before = logits.copy()
            ours = fast.distribution(logits)
            assert np.array_equal(logits, before)  # bias and penalties restored
            theirs, token = chain_pick(chain, logits)
            # Fewer finite logits than top_k (a mask): both keep some -inf tokens at p == 0,
            # which ones is arbitrary (llama.cpp sorts ties in no particular order)
            assert len(ours) == len(theirs), f"step {step}"
            assert {t: p for t, p in ours.items() if p} == {t: p for t, p in theirs.items() if p}, (
                f"step {step}"
            )
            assert abs(sum(ours.values()) - 1.0) < 1e-5
            lib.llama_sampler_accept(chain, token)  # the same history for the penalties
            fast.accept(token)
    finally:
        fast.close()
        lib.llama_sampler_free(chain)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_same_seed_draws_the_chains_tokens(name: str) -> None:
    settings = SamplerSettings(**SETTINGS[name])
    rng = np.random.default_rng(7)
    fast, chain = pair(settings, GEMMA_VOCAB, seed=99)
    ours, theirs = [], []
    try:
        for _ in range(150):
            logits = synthetic_logits(rng, GEMMA_VOCAB)
            ours.append(fast.choose(logits))
            _, token = chain_pick(chain, logits, read=False)
            lib.llama_sampler_accept(chain, token)
            theirs.append(token)
    finally:
        fast.close()
        lib.llama_sampler_free(chain)
    assert ours == theirs
    assert len(set(ours)) > 1  # it sampled, not just took the argmax


def test_greedy_with_penalties_and_bias_matches_the_chain() -> None:
    settings = SamplerSettings(
        temperature=0.0, repeat_penalty=1.5, presence_penalty=0.5, logit_bias={3: 2.0}
    )
    rng = np.random.default_rng(3)
    fast, chain = pair(settings, GEMMA_VOCAB, seed=0)
    try:
        for _ in range(60):
            # a few strong candidates drawn from a small set, so penalties change the argmax
            logits = (rng.standard_normal(GEMMA_VOCAB) * 2).astype(np.float32)
            logits[rng.integers(0, 6, 3)] += 12.0
            _, token = chain_pick(chain, logits, read=False)
            lib.llama_sampler_accept(chain, token)
            assert fast.choose(logits) == token
    finally:
        fast.close()
        lib.llama_sampler_free(chain)


def test_the_draws_follow_the_probabilities() -> None:
    """A chi-square check that the draws follow the distribution reported (not only equal)."""
    settings = SamplerSettings(temperature=0.75, top_p=0.9)
    logits = synthetic_logits(np.random.default_rng(11), GEMMA_VOCAB)
    fast = FastSampler(settings, n_vocab=GEMMA_VOCAB, seed=5, last_n=LAST_N)
    probabilities = fast.distribution(logits)
    draws = 4000
    counts: dict[int, int] = {}
    for _ in range(draws):
        token = fast.sample(logits)
        counts[token] = counts.get(token, 0) + 1
    fast.close()
    assert set(counts) <= set(probabilities)
    chi2 = sum(
        (counts.get(t, 0) - draws * p) ** 2 / (draws * p)
        for t, p in probabilities.items()
        if draws * p >= 5
    )
    dof = sum(1 for p in probabilities.values() if draws * p >= 5) - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5 + 10


def test_which_settings_take_the_fast_path() -> None:
    assert fast_path_applies(SamplerSettings(temperature=0.75), GEMMA_VOCAB)
    assert fast_path_applies(SamplerSettings(temperature=0.0, mirostat_mode=2), GEMMA_VOCAB)
    assert fast_path_applies(SamplerSettings(temperature=0.7, top_k=4096), GEMMA_VOCAB)
    assert not fast_path_applies(SamplerSettings(temperature=0.7, top_k=4097), GEMMA_VOCAB)
    assert not fast_path_applies(SamplerSettings(temperature=0.7, top_k=0), GEMMA_VOCAB)
    assert not fast_path_applies(SamplerSettings(temperature=0.7, mirostat_mode=1), GEMMA_VOCAB)
    with pytest.raises(ValueError, match="full sampler chain"):
        FastSampler(
            SamplerSettings(temperature=0.7, mirostat_mode=2), n_vocab=100, seed=1, last_n=64
        )


# -- choose_batch: the numpy part for many rows at once ----------------------------------
BATCH_SETTINGS = [
    {"temperature": 0.75, "top_p": 0.9},
    {"temperature": 0.75, "top_p": 0.95},
    {"temperature": 1.0, "top_k": 5, "min_p": 0.0},
    {"temperature": 1.2, "top_k": 300},  # a larger k: more groups for the whole batch
    {"temperature": 0.9, "repeat_penalty": 1.3, "logit_bias": {5: 3.0, 11: 25.0}},
    {"temperature": 0.0, "presence_penalty": 0.5},  # greedy: its argmax
    {"temperature": 0.8, "top_k": 0},  # every logit: picks alone
]


def batch_of(n_vocab: int, seed: int) -> list[FastSampler]:
    return [
        FastSampler(SamplerSettings(**options), n_vocab=n_vocab, seed=seed + i, last_n=LAST_N)
        for i, options in enumerate(BATCH_SETTINGS)
    ]


@pytest.mark.parametrize("n_vocab", [GEMMA_VOCAB, ODD_VOCAB])
def test_choose_batch_equals_choose_row_by_row(n_vocab: int) -> None:
    """Row i's pick is ``samplers[i].choose(row i)``: same seed state, same history."""
    rng = np.random.default_rng(n_vocab)
    batched, alone = batch_of(n_vocab, 50), batch_of(n_vocab, 50)
    try:
        for step in range(30):
            logits = np.stack(
                [
                    synthetic_logits(rng, n_vocab, masked=(step + row) % 9 == 4)
                    for row in range(len(BATCH_SETTINGS))
                ]
            )
            if step % 10 == 3:
                logits[1, 77] = np.nan  # one row's NaN does not touch the others
            before = logits.copy()
            picks = choose_batch(batched, logits)
            assert np.array_equal(logits, before, equal_nan=True)  # bias, penalties undone
            assert picks == [sampler.choose(logits[i]) for i, sampler in enumerate(alone)]
    finally:
        for sampler in [*batched, *alone]:
            sampler.close()


def test_choose_batch_draws_the_chains_tokens() -> None:
    """Every row of the batch draws what llama.cpp's full chain draws with the same seed."""
    settings = SamplerSettings(temperature=0.75, top_p=0.95)
    rng = np.random.default_rng(17)
    rows = 4
    samplers = [
        FastSampler(settings, n_vocab=GEMMA_VOCAB, seed=10 + i, last_n=LAST_N) for i in range(rows)
    ]
    chains = [
        build_sampler(settings, vocab=None, n_vocab=GEMMA_VOCAB, seed=10 + i, last_n=LAST_N)
        for i in range(rows)
    ]
    try:
        for _ in range(40):
            logits = np.stack([synthetic_logits(rng, GEMMA_VOCAB) for _ in range(rows)])
            picks = choose_batch(samplers, logits)
            expected = []
            for row, chain in enumerate(chains):
                _, token = chain_pick(chain, logits[row], read=False)
                lib.llama_sampler_accept(chain, token)
                expected.append(token)
            assert picks == expected
    finally:
        for sampler in samplers:
            sampler.close()
        for chain in chains:
            lib.llama_sampler_free(chain)


def test_choose_batch_of_a_subset_of_rows_and_of_none() -> None:
    """Greedy rows among sampled ones (the sampled rows' maxima are taken row by row)."""
    greedy = SamplerSettings(temperature=0.0)
    sampled = SamplerSettings(temperature=0.75, top_p=0.9)
    make = FastSampler
    samplers = [
        make(greedy, n_vocab=ODD_VOCAB, seed=1, last_n=LAST_N),
        make(sampled, n_vocab=ODD_VOCAB, seed=2, last_n=LAST_N),
    ]
    alone = make(sampled, n_vocab=ODD_VOCAB, seed=2, last_n=LAST_N)
    rng = np.random.default_rng(2)
    for _ in range(10):
        logits = np.stack([synthetic_logits(rng, ODD_VOCAB) for _ in range(2)])
        assert choose_batch(samplers, logits) == [int(logits[0].argmax()), alone.choose(logits[1])]
    assert choose_batch([], np.empty((0, ODD_VOCAB), dtype=np.float32)) == []


def test_choose_batch_without_accepting_leaves_the_history() -> None:
    """``accept=False`` samples only: the penalties see no history until ``accept``."""
    settings = SamplerSettings(temperature=0.0, repeat_penalty=50.0)
    sampler = FastSampler(settings, n_vocab=ODD_VOCAB, seed=1, last_n=LAST_N)
    logits = synthetic_logits(np.random.default_rng(4), ODD_VOCAB)[None, :]
    first = choose_batch([sampler], logits, accept=False)
    assert choose_batch([sampler], logits, accept=False) == first  # no penalty yet
    sampler.accept(first[0])
    assert choose_batch([sampler], logits) != first  # now penalised


def test_choose_batch_refuses_mismatched_rows() -> None:
    sampler = FastSampler(SamplerSettings(temperature=0.7), n_vocab=5_000, seed=1, last_n=LAST_N)
    with pytest.raises(ConfigurationError, match="one logits row per sampler"):
        choose_batch([sampler], np.zeros((2, 5_000), dtype=np.float32))
    with pytest.raises(ConfigurationError, match="n_vocab == 4000"):
        choose_batch([sampler], np.zeros((1, 4_000), dtype=np.float32))
    sampler.close()


# -- end to end on a model with a large vocabulary --------------------------------------
@pytest.fixture(scope="module")
def wide_llm(tmp_path_factory: pytest.TempPathFactory) -> LlamaCPP:
    """The tiny model with 40,000 extra word tokens: above the loop's fast-sampler size."""
    tokens = ["<unk>", *SPECIAL_TOKENS, *(f"<0x{byte:02X}>" for byte in range(256))]
    types = [2] + [3] * len(SPECIAL_TOKENS) + [6] * 256
    words = ["\u2581", *string.printable[:94], *(f"\u2581w{i}" for i in range(40_000))]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * (len(tokens) - len(words)) + [float(len(word)) for word in words]
    spec = TinyModelSpec(
        name="serapeum-tiny-wide",
        vocabulary=Vocabulary(tokens=tuple(tokens), scores=tuple(scores), types=tuple(types)),
    )
    path = build_tiny_gguf(Path(tmp_path_factory.mktemp("wide")) / "tiny-wide.gguf", spec)
    return LlamaCPP(model_path=str(path), formatter="llama2", temperature=0.75, max_new_tokens=24)


class CountingSampler(FastSampler):
    """The real fast sampler, counting how many generations used it (a spy, not a mock)."""

    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        CountingSampler.made += 1


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingSampler]:
    CountingSampler.made = 0
    monkeypatch.setattr(generation, "FastSampler", CountingSampler)
    return CountingSampler


def on_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every request through llama.cpp's chain (the loop's own size switch, raised)."""
    monkeypatch.setattr(generation, "FAST_SAMPLER_MIN_VOCAB", 10**9)


def test_the_loop_uses_the_fast_sampler(
    wide_llm: LlamaCPP, tiny_llm: LlamaCPP, counting: Any
) -> None:
    wide_llm.complete("hello", seed=1, top_p=0.9)
    wide_llm.complete("hello", seed=1, temperature=0.0, repeat_penalty=1.2)
    assert counting.made == 2
    wide_llm.complete("hello", seed=1, top_k=0)  # no top-k: the chain
    wide_llm.complete("hello", temperature=0.0)  # plain greedy: numpy's argmax
    tiny_llm.complete("hello", temperature=0.8, seed=1)  # a small vocabulary: the chain
    assert counting.made == 2


def test_same_seed_same_text_and_different_seeds_differ(wide_llm: LlamaCPP) -> None:
    first = wide_llm.complete("hello", seed=42, top_p=0.9).text
    assert wide_llm.complete("hello", seed=42, top_p=0.9).text == first
    others = {wide_llm.complete("hello", seed=seed, top_p=0.9).text for seed in range(5)}
    assert len(others | {first}) > 1


@pytest.mark.parametrize(
    "options",
    [
        {"top_p": 0.9},
        {"top_k": 5, "min_p": 0.0, "temperature": 1.0},
        {"repeat_penalty": 1.4, "frequency_penalty": 0.3, "logit_bias": {400: 5.0}},
        {"temperature": 0.0, "repeat_penalty": 1.5},
    ],
    ids=["seed-defaults", "top-k-5", "penalties", "greedy-penalties"],
)
def test_fast_and_chain_write_the_same_text(
    wide_llm: LlamaCPP, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    fast = [wide_llm.complete("hello", seed=seed, **options).text for seed in (3, 4)]
    on_the_chain(monkeypatch)
    chain = [wide_llm.complete("hello", seed=seed, **options).text for seed in (3, 4)]
    assert fast == chain
    assert all(fast)


def test_temperature_zero_is_still_greedy(wide_llm: LlamaCPP) -> None:
    greedy = wide_llm.complete("hello", temperature=0.0).text
    assert wide_llm.complete("hello", temperature=0.0, seed=9).text == greedy
    assert wide_llm.complete("hello", top_k=1, seed=9).text == greedy  # top-1 sampling


def test_logprobs_and_streaming_keep_the_same_picks(wide_llm: LlamaCPP) -> None:
    plain = wide_llm.complete("hello", seed=8, top_p=0.9).text
    inspected = wide_llm.complete("hello", seed=8, top_p=0.9, logprobs=2)
    assert inspected.text == plain
    streamed = "".join(
        chunk.delta or "" for chunk in wide_llm.complete("hello", seed=8, top_p=0.9, stream=True)
    )
    assert streamed == plain


def test_constrained_sampling_uses_the_fast_sampler(
    wide_llm: LlamaCPP, monkeypatch: pytest.MonkeyPatch, counting: Any
) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    texts = [
        wide_llm.complete("x", json_schema=schema, seed=seed, max_new_tokens=40).text
        for seed in (1, 2)
    ]
    assert counting.made == 2
    assert all(isinstance(json.loads(text)["ok"], bool) for text in texts)
    on_the_chain(monkeypatch)
    chain = [
        wide_llm.complete("x", json_schema=schema, seed=seed, max_new_tokens=40).text
        for seed in (1, 2)
    ]
    assert chain == texts
