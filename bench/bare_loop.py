"""The floor: the least Python a greedy generation over llama.cpp's low-level API needs.

No stop sequences, no streaming, no cancellation: sample, look up the bytes, decode.
"""

from __future__ import annotations

import ctypes
from typing import Any


def bare_generate(llama: Any, prompt_tokens: list[int], max_tokens: int) -> tuple[str, int]:
    import llama_cpp as lib

    llama.reset()
    llama._ctx.kv_cache_clear()
    ctx, vocab = llama.ctx, llama._model.vocab
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    step = llama.n_batch
    for offset in range(0, len(prompt_tokens), step):
        chunk = prompt_tokens[offset : offset + step]
        cells = (lib.llama_token * len(chunk))(*chunk)  # must outlive the decode
        lib.llama_decode(ctx, lib.llama_batch_get_one(cells, len(chunk)))
    cell = (lib.llama_token * 1)()
    batch = lib.llama_batch_get_one(cell, 1)
    buffer = ctypes.create_string_buffer(256)
    out = bytearray()
    count = 0
    for index in range(max_tokens):
        token = lib.llama_sampler_sample(chain, ctx, -1)
        if lib.llama_vocab_is_eog(vocab, token):
            break
        count += 1
        written = lib.llama_token_to_piece(vocab, token, buffer, 256, 0, False)
        out += buffer.raw[:written]
        if index + 1 < max_tokens:
            cell[0] = token
            lib.llama_decode(ctx, batch)
    lib.llama_sampler_free(chain)
    llama.reset()
    llama._ctx.kv_cache_clear()
    return out.decode("utf-8", "replace"), count
