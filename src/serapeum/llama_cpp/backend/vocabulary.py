"""What the built-in backend reads from a loaded vocabulary: special tokens, model info."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from serapeum.core.plugins import ModelInfo
from serapeum.llama_cpp.backend.llama_loader import CHAT_TEMPLATE_KEY, chat_templates_of


def special_token_texts(llama: Any) -> set[str]:
    """Texts of the control and user-defined tokens: the ones prompts use as markers."""
    import llama_cpp

    special = (
        llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    )
    vocab, n_vocab = llama._model.vocab, llama._model.n_vocab()
    texts = {
        token_text(vocab, token)
        for token in range(n_vocab)
        if llama_cpp.llama_vocab_get_attr(vocab, token) & special
    }
    texts.discard("")
    return texts


def token_text(vocab: Any, token: int) -> str:
    """A token's text; invalid UTF-8 in a vocabulary becomes U+FFFD, never an exception."""
    import llama_cpp

    if token < 0:
        return ""
    raw = llama_cpp.llama_vocab_get_text(vocab, token)
    return raw.decode("utf-8", errors="replace") if raw else ""


def vocab_type_spm() -> int:
    import llama_cpp

    return int(llama_cpp.LLAMA_VOCAB_TYPE_SPM)


def token_characters(llama: Any) -> frozenset[str]:
    """Every character some token's text contains (SentencePiece writes spaces as U+2581)."""
    import llama_cpp

    vocab, n_vocab = llama._model.vocab, llama._model.n_vocab()
    characters: set[str] = set()
    for token in range(n_vocab):
        raw = llama_cpp.llama_vocab_get_text(vocab, token)
        if raw:
            characters.update(raw.decode("utf-8", errors="replace"))
    if "\u2581" in characters:
        characters.add(" ")
    return frozenset(characters)


def model_info(llama: Any, special_tokens: set[str]) -> ModelInfo:
    model = llama._model
    vocab = model.vocab
    metadata = {**llama.metadata, **chat_templates_of(llama)}
    return ModelInfo(
        architecture=metadata.get("general.architecture", ""),
        name=metadata.get("general.name", ""),
        chat_template=metadata.get(CHAT_TEMPLATE_KEY) or None,
        bos_token=token_text(vocab, llama.token_bos()),
        eos_token=token_text(vocab, llama.token_eos()),
        eot_token=token_text(vocab, model.token_eot()),
        special_tokens=tuple(sorted(special_tokens)),
        metadata=metadata,
    )


def space_after_special_pattern(
    llama: Any, special_tokens: Callable[[], set[str]]
) -> re.Pattern[str] | None:
    """For SentencePiece vocabularies: a special token's text followed by one space.

    llama.cpp's SentencePiece tokenizer puts a space before the text that follows a special
    token (the "legacy" behaviour), so ``"<s> [INST]"`` becomes ``<s> ▁ ▁[INST]`` while the
    family's reference tokenizer (e.g. mistral-common) gives ``<s> ▁[INST]``. Dropping the
    one space that the template wrote there makes llama.cpp produce the reference ids.
    """
    import llama_cpp

    model = llama._model
    if model.vocab_type() != llama_cpp.LLAMA_VOCAB_TYPE_SPM:
        return None
    if str(llama.metadata.get("tokenizer.ggml.add_space_prefix", "true")).lower() == "false":
        return None
    texts = special_tokens()
    if not texts:
        return None
    # Longest first, and atomic: where a longer special token matches, a shorter one that
    # is its prefix must not (llama.cpp partitions the text the same way).
    alternatives = "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))
    return re.compile(f"((?>{alternatives})) ")
