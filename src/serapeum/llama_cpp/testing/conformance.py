"""The conformance kit for plugins: call it from your plugin's tests.

``check_formatter`` for prompt formatters, ``check_source`` for model sources.

    from serapeum.llama_cpp.testing.conformance import check_formatter

    def test_my_formatter_conforms():
        check_formatter(MY_FORMATTER)

It renders conversations with your formatter and runs them through a real tiny GGUF model
(generated on the fly, with your format's special tokens as single tokens), and fails with
a ``ConformanceError`` that says what is wrong: system messages dropped, turns lost or out of
order, completion and chat disagreeing, BOS missing or doubled, stop markers the family's
model cannot produce, prompts the model cannot complete.

Stop markers are checked against the family's vocabulary: the real one when you pass
``model_path=`` (any GGUF of your family; only its vocabulary is read), else the control
tokens you declare with ``special_tokens=`` plus those of the built-in families (Llama 2/3,
Mistral, Gemma, ChatML). A marker that looks like a control token (``<...>``) must be one
of them, and a single token; any other marker must be text the formatter writes where an
assistant turn ends, since that is what the model learns to produce.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

from serapeum.core.errors import ConfigurationError, SerapeumError
from serapeum.core.llms import Message
from serapeum.core.plugins import ModelRequest, ModelSource, PluginHost, PromptFormatter
from serapeum.llama_cpp.testing.tiny_model import SPECIAL_TOKENS, TinyModelSpec, build_tiny_gguf

SYSTEM = "KIT-SYSTEM-7d1"
TURNS = ("KIT-USER-ONE", "KIT-ANSWER-ONE", "KIT-USER-TWO")


class ConformanceError(SerapeumError, AssertionError):
    """A formatter breaks a rule every prompt format must keep."""


@frozen
class ConformanceReport:
    """What the kit checked, for a plugin author who wants to look."""

    formatter: str
    prompt: str
    prompt_tokens: int
    bos_token: str
    completion_tokens: int


# How every family we know writes control tokens: <s>, <|eot_id|>, <end_of_turn>...
CONTROL_LIKE = re.compile(r"<[^<>\s]+>")

_models: dict[tuple[str, str, tuple[str, ...]], Path] = {}


def _tiny_model(bos: str, eos: str, extra: tuple[str, ...] = ()) -> Path:
    key = (bos, eos, extra)
    if key not in _models:
        folder = Path(tempfile.mkdtemp(prefix="serapeum-conformance-"))
        spec = TinyModelSpec(
            bos_token=bos, eos_token=eos, name="serapeum-conformance", extra_special_tokens=extra
        )
        _models[key] = build_tiny_gguf(folder / "conformance.gguf", spec)
    return _models[key]


@frozen
class _FamilyVocabulary:
    """The control tokens of the formatter's family, and where the kit got them."""

    tokens: frozenset[str]
    origin: str
    real: object | None = None  # a vocab-only ``llama_cpp.Llama`` of the family's GGUF

    def is_single_token(self, text: str) -> bool:
        if self.real is None:
            return True  # checked on the tiny model, which carries the token
        tokens = self.real.tokenize(text.encode(), add_bos=False, special=True)  # type: ignore[attr-defined]
        return len(tokens) == 1


def _family_vocabulary(
    model_path: str | Path | None, special_tokens: Iterable[str] | None
) -> _FamilyVocabulary:
    if model_path is not None and special_tokens is not None:
        raise ConfigurationError(
            "pass model_path= (a GGUF of the family: its real vocabulary) or special_tokens= "
            "(the family's control tokens, when you have no GGUF at hand), not both"
        )
    if model_path is not None:
        import llama_cpp
        from serapeum.llama_cpp.backend import native_log
        from serapeum.llama_cpp.backend.vocabulary import special_token_texts

        native_log.install()
        llama = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
        return _FamilyVocabulary(
            frozenset(special_token_texts(llama)), f"the vocabulary of {model_path}", llama
        )
    declared = tuple(special_tokens or ())
    origin = "the kit's built-in families"
    if declared:
        origin = f"the declared special_tokens {declared!r} and {origin}"
    return _FamilyVocabulary(frozenset(SPECIAL_TOKENS) | frozenset(declared), origin)


def _check_stop_markers(formatter: PromptFormatter, prompt: str, family: _FamilyVocabulary) -> None:
    """Each stop marker must be something the family's model can produce."""
    answer_end = prompt.find(TURNS[1]) + len(TURNS[1])
    after_answer = prompt[answer_end : prompt.find(TURNS[2], answer_end)]
    for stop in formatter.stop:
        unknown = [piece for piece in CONTROL_LIKE.findall(stop) if piece not in family.tokens]
        if unknown:
            raise _fail(
                formatter,
                f"stop marker {stop!r}: {unknown[0]!r} is not a control token of the family's "
                f"vocabulary ({family.origin}), so the model never produces it; use the "
                "family's end-of-turn token, or declare your family's tokens with "
                "special_tokens=, or pass model_path= a GGUF of the family",
            )
        if stop in family.tokens:
            if not family.is_single_token(stop):
                raise _fail(formatter, f"stop marker {stop!r} is not a single special token")
        elif stop not in after_answer:
            raise _fail(
                formatter,
                f"stop marker {stop!r} never ends an assistant turn in the prompts this "
                f"formatter writes (after an answer it writes {after_answer!r}), so the "
                "model never learns to produce it",
            )


def _fail(formatter: PromptFormatter, problem: str) -> ConformanceError:
    return ConformanceError(f"formatter {formatter.name!r}: {problem}")


def check_formatter(
    formatter: PromptFormatter,
    *,
    bos_token: str | None = None,
    model_path: str | Path | None = None,
    special_tokens: Iterable[str] | None = None,
) -> ConformanceReport:
    """Check ``formatter`` against the rules; returns a report, raises ``ConformanceError``.

    ``bos_token`` is the text of your family's BOS token; by default it is read from the
    start of the rendered prompt when ``prompt_starts_with_bos`` is set, else ``<s>``.
    ``model_path`` (a GGUF of your family) gives the kit the family's real vocabulary;
    without one, declare your family's control tokens in ``special_tokens`` unless they are
    those of a built-in family. Stop markers are checked against that vocabulary.
    """
    conversation = [
        Message.system(SYSTEM),
        Message.user(TURNS[0]),
        Message.assistant(TURNS[1]),
        Message.user(TURNS[2]),
    ]
    prompt = formatter.render_messages(conversation)
    if not isinstance(prompt, str) or not prompt:
        raise _fail(formatter, "messages_to_prompt must return a non-empty string")
    if SYSTEM not in prompt:
        raise _fail(formatter, "the system message was dropped")
    positions = [prompt.find(text) for text in TURNS]
    if -1 in positions or positions != sorted(positions):
        raise _fail(formatter, f"turns were lost or reordered in {prompt!r}")
    if SYSTEM not in formatter.render_messages(conversation[1:], system_prompt=SYSTEM):
        raise _fail(formatter, "the system_prompt argument was dropped")
    if formatter.render_completion(TURNS[0], system_prompt=SYSTEM) != formatter.render_messages(
        [Message.system(SYSTEM), Message.user(TURNS[0])]
    ):
        raise _fail(
            formatter, "completion_to_prompt differs from one user turn of messages_to_prompt"
        )
    if not all(isinstance(stop, str) and stop for stop in formatter.stop):
        raise _fail(formatter, f"stop markers must be non-empty strings, got {formatter.stop!r}")
    family = _family_vocabulary(model_path, special_tokens)
    _check_stop_markers(formatter, prompt, family)

    leading = _leading_special(prompt, family.tokens) if formatter.prompt_starts_with_bos else None
    bos = bos_token or leading or "<s>"
    if formatter.prompt_starts_with_bos and not prompt.startswith(bos):
        raise _fail(
            formatter, f"prompt_starts_with_bos is set but the prompt starts {prompt[:20]!r}"
        )
    # Without a BOS in the prompt, "<s>" is only the tiny model's own BOS.
    writes_bos = formatter.prompt_starts_with_bos or bos_token is not None
    if writes_bos and bos not in family.tokens:
        raise _fail(
            formatter,
            f"{bos!r} is not a control token of the family's vocabulary ({family.origin}), "
            "so it cannot be the BOS token",
        )
    # The tiny model carries the family's control tokens that the prompts and stops use.
    used = {t for t in family.tokens if CONTROL_LIKE.fullmatch(t) and t in prompt}
    used |= {t for t in formatter.stop if t in family.tokens} | {bos}
    extra = tuple(sorted(t for t in used if t not in SPECIAL_TOKENS))
    return _run_on_tiny_model(formatter, prompt, bos, extra)


def _leading_special(prompt: str, tokens: Iterable[str]) -> str | None:
    return next((t for t in sorted(tokens, key=len, reverse=True) if prompt.startswith(t)), None)


def _run_on_tiny_model(
    formatter: PromptFormatter, prompt: str, bos: str, extra: tuple[str, ...]
) -> ConformanceReport:
    from serapeum.llama_cpp.llm import LlamaCPP

    eos = "</s>" if bos != "</s>" else "<eos>"
    host = PluginHost(strict=True)
    host.load_entry_points()
    llm = LlamaCPP(
        model_path=str(_tiny_model(bos, eos, extra)),
        formatter=formatter,
        temperature=0.0,
        plugins=host,
    )
    llama = llm.loaded_model.llama  # type: ignore[attr-defined]
    tokens = llm.tokenize(prompt)
    bos_id = llama.token_bos()
    if tokens[0] != bos_id or (len(tokens) > 1 and tokens[1] == bos_id):
        raise _fail(formatter, "BOS must reach the model exactly once at the start of the prompt")
    for stop in formatter.stop:
        if (
            stop in SPECIAL_TOKENS + extra
            and len(llama.tokenize(stop.encode(), add_bos=False, special=True)) != 1
        ):
            raise _fail(formatter, f"stop marker {stop!r} is not a single special token")
    response = llm.chat([Message.user(TURNS[0])], max_new_tokens=4)
    if response.raw["usage"]["prompt_tokens"] != len(
        llm.tokenize(formatter.render_messages([Message.user(TURNS[0])]))
    ):
        raise _fail(formatter, "the model did not receive the rendered prompt")
    return ConformanceReport(
        formatter=formatter.name,
        prompt=prompt,
        prompt_tokens=len(tokens),
        bos_token=bos,
        completion_tokens=int(response.raw["usage"]["completion_tokens"]),
    )


def check_source(source: ModelSource, request: ModelRequest) -> Path:
    """Check a model source on a request it should serve; returns the resolved path.

    The source must claim the request, resolve it to an existing GGUF file, claim none of
    the requests of other kinds it was not written for, and load in ``LlamaCPP``.
    """
    from serapeum.llama_cpp.gguf_file import require_gguf
    from serapeum.llama_cpp.llm import LlamaCPP

    where = f"source {source.name!r}"
    if not source.handles(request):
        raise ConformanceError(f"{where} does not claim {request.describe()}")
    path = Path(source.resolve(request))
    if not path.is_file():
        raise ConformanceError(f"{where} resolved {request.describe()} to {path}, which is no file")
    require_gguf(path)
    if Path(source.resolve(request)) != path:
        raise ConformanceError(f"{where} resolves the same request to different files")
    unrelated = {
        "path": ModelRequest(model_path="/nonexistent/kit.gguf"),
        "url": ModelRequest(model_url="kit-scheme://host/kit.gguf"),
        "hf": ModelRequest(hf_model_id="kit-org/kit-repo", hf_filename="kit.gguf"),
    }
    for kind, other in unrelated.items():
        if kind != request.kind and source.handles(other):
            raise ConformanceError(
                f"{where} claims a {kind} request it cannot serve: {other.describe()}"
            )
    LlamaCPP(model_path=str(path), formatter=_PLAIN_TEXT)
    return path


def _plain_messages(messages: list[Message], system_prompt: str | None = None) -> str:
    return "\n".join(message.content for message in messages)


def _plain_completion(completion: str, system_prompt: str | None = None) -> str:
    return completion


# Loading only needs some prompt format; this one depends on no formatter plugin.
_PLAIN_TEXT = PromptFormatter(
    name="kit-plain-text",
    messages_to_prompt=_plain_messages,
    completion_to_prompt=_plain_completion,
)
