"""A tiny Llama-architecture GGUF with random weights, written with the ``gguf`` package.

It loads in milliseconds and produces gibberish, which is all the engine's tests need:
real llama.cpp inference, real tokenisation (SentencePiece-style vocabulary with byte
fallback) and the special tokens of the Llama 2, Llama 3, Mistral, Gemma and ChatML
formats, so formatters can be checked on token ids.
"""

from __future__ import annotations

import string
from pathlib import Path

from attrs import frozen

# Control tokens the prompt formats use; llama.cpp parses them as single tokens.
SPECIAL_TOKENS = (
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
    "<bos>",
    "<eos>",
)

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hello",
    "world",
    "yes",
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "user",
    "assistant",
    "system",
    "model",
    "answer",
    "question",
    "INST",
    "SYS",
]

# gguf token types (gguf.TokenType): NORMAL=1, UNKNOWN=2, CONTROL=3, UNUSED=5, BYTE=6
_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6


@frozen
class Vocabulary:
    """A tokenizer vocabulary for the tiny model (llama.cpp's SentencePiece-style ``llama`` type)."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]


def sentencepiece_vocabulary(model_file: str | Path) -> Vocabulary:
    """A real model family's vocabulary, read from its SentencePiece ``tokenizer.model``.

    With it, the tiny model tokenises exactly as that family's GGUF files do, so prompt
    formats can be checked against the family's reference token ids.
    """
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for token_id in range(processor.vocab_size()):
        tokens.append(processor.id_to_piece(token_id))
        scores.append(processor.get_score(token_id))
        if processor.is_unknown(token_id):
            types.append(_UNKNOWN)
        elif processor.is_control(token_id):
            types.append(_CONTROL)
        elif processor.is_byte(token_id):
            types.append(_BYTE)
        elif processor.is_unused(token_id):
            types.append(_UNUSED)
        else:
            types.append(_NORMAL)
    return Vocabulary(tokens=tuple(tokens), scores=tuple(scores), types=tuple(types))


@frozen
class TinyModelSpec:
    """What to build; the defaults make a Llama 2 / Mistral-like model (BOS ``<s>``).

    ``vocabulary`` replaces the built-in small vocabulary (see ``sentencepiece_vocabulary``).
    """

    bos_token: str = "<s>"
    eos_token: str = "</s>"
    chat_template: str | None = None
    name: str = "serapeum-tiny-llama"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    context_length: int = 4096
    seed: int = 1234
    vocabulary: Vocabulary | None = None
    extra_special_tokens: tuple[str, ...] = ()
    """Control tokens added to the built-in vocabulary (a new family's markers)."""


def _builtin_vocabulary(extra_special_tokens: tuple[str, ...] = ()) -> Vocabulary:
    special = SPECIAL_TOKENS + tuple(t for t in extra_special_tokens if t not in SPECIAL_TOKENS)
    tokens: list[str] = ["<unk>"]
    types = [_UNKNOWN]
    tokens += special
    types += [_CONTROL] * len(special)
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [_BYTE] * 256
    pieces = ["\u2581"] + [c for c in string.printable[:94]]
    pieces += ["\u2581" + c for c in string.ascii_letters + string.digits]
    pieces += ["\u2581" + word for word in _WORDS]
    seen = set(tokens)
    unique = [p for p in pieces if p not in seen and not seen.add(p)]  # type: ignore[func-returns-value]
    tokens += unique
    types += [_NORMAL] * len(unique)
    # SentencePiece merges prefer higher scores: longer pieces win.
    scores = [0.0] * (len(tokens) - len(unique)) + [float(len(p)) for p in unique]
    return Vocabulary(tokens=tuple(tokens), scores=tuple(scores), types=tuple(types))


def build_tiny_gguf(path: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write the tiny model to ``path`` (deterministic for a given spec) and return it."""
    try:
        import gguf
        import numpy as np
    except ImportError as exc:
        raise ImportError(
            f"building a tiny GGUF model (the plugin conformance kit) needs the {exc.name!r} "
            "package: pip install 'serapeum-llama-cpp[testing]'",
            name=exc.name,
        ) from exc

    spec = spec or TinyModelSpec()
    path = Path(path)
    vocabulary = spec.vocabulary or _builtin_vocabulary(spec.extra_special_tokens)
    tokens, scores, types = list(vocabulary.tokens), list(vocabulary.scores), list(vocabulary.types)
    n_vocab = len(tokens)
    rng = np.random.default_rng(spec.seed)

    def weights(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(spec.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index(spec.bos_token))
    writer.add_eos_token_id(tokens.index(spec.eos_token))
    writer.add_unk_token_id(types.index(_UNKNOWN) if _UNKNOWN in types else 0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)

    writer.add_tensor("token_embd.weight", weights(n_vocab, spec.n_embd, scale=0.5))
    writer.add_tensor("output_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
    output = weights(n_vocab, spec.n_embd, scale=0.5)
    # Keep control and byte tokens out of greedy picks so generations run long and
    # stay printable; sampling at temperature > 0 can still reach them.
    output[[i for i, kind in enumerate(types) if kind != _NORMAL]] *= 0.05
    writer.add_tensor("output.weight", output)
    for layer in range(spec.n_layer):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", weights(spec.n_embd, spec.n_embd))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(spec.n_ff, spec.n_embd))
        writer.add_tensor(prefix + "ffn_up.weight", weights(spec.n_ff, spec.n_embd))
        writer.add_tensor(prefix + "ffn_down.weight", weights(spec.n_embd, spec.n_ff))

    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
