"""Picking the prompt format from the model: plugin detection, else the GGUF's own template."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from serapeum.core.llms import Message
from serapeum.core.plugins import PluginHost
from serapeum.llama_cpp import LlamaCPP, MissingFormatterError
from serapeum.llama_cpp.chat_template import ChatTemplateError, render_chat_template
from serapeum.llama_cpp.formatters.llama3 import LLAMA3
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf

TEMPLATES = Path(__file__).parent / "data" / "chat-templates.json"
S, U, A = Message.system, Message.user, Message.assistant


def _template(family: str) -> str:
    return next(e for e in json.loads(TEMPLATES.read_text()) if e["family"] == family)[
        "chat_template"
    ]


@pytest.fixture(scope="module")
def tiny_with_llama3_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TinyModelSpec(
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=_template("llama-3-instruct"),
        name="tiny-with-template",
    )
    return build_tiny_gguf(tmp_path_factory.mktemp("tpl") / "tiny-template.gguf", spec)


def test_a_gguf_chat_template_is_rendered_exactly_like_the_official_one(
    tiny_with_llama3_template: Path,
) -> None:
    llm = LlamaCPP(model_path=str(tiny_with_llama3_template), temperature=0.0)
    assert llm.formatter_name == "gguf-chat-template"
    assert llm.formatter_reason == "the chat template embedded in the GGUF file"
    conversation = [S("Be brief."), U("Hi"), A("Hello"), U("Again")]
    assert llm.format_messages(conversation) == LLAMA3.render_messages(conversation)
    assert llm.format_completion("Hi") == LLAMA3.render_completion("Hi")
    tokens = llm.tokenize(llm.format_messages(conversation))
    assert tokens.count(llm.loaded_model.llama.token_bos()) == 1
    assert "<|eot_id|>" in llm._build_request("Hi", False, {}).stop
    assert llm.complete("Hi", max_new_tokens=3).raw["usage"]["completion_tokens"] >= 1


def test_a_gguf_with_neither_a_plugin_nor_a_template_is_refused(tiny_model_path: Path) -> None:
    with pytest.raises(MissingFormatterError, match="no installed formatter recognises") as info:
        LlamaCPP(model_path=str(tiny_model_path))
    assert "chatml, gemma, llama2, llama3, mistral" in str(info.value)


@pytest.mark.e2e
def test_gemma_is_recognised_by_its_plugin(gemma_model_path: Path) -> None:
    llm = LlamaCPP(model_path=str(gemma_model_path), context_window=1024, temperature=0.0)
    assert llm.formatter_name == "gemma"
    assert "serapeum-formatters-gemma recognised the model" in llm.formatter_reason
    assert (
        llm.format_completion("Hi")
        == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.e2e
def test_without_the_gemma_plugin_detection_falls_through_and_says_so(
    gemma_model_path: Path, plugin_host: PluginHost
) -> None:
    plugin_host.unregister("gemma")  # as after pip uninstall serapeum-formatters-gemma
    with pytest.raises(MissingFormatterError, match="architecture 'gemma3'") as info:
        LlamaCPP(model_path=str(gemma_model_path), context_window=1024, plugins=plugin_host)
    assert "gemma" not in str(info.value).split("installed formatters:")[1]


def test_system_prompt_reaches_a_template_without_one(tiny_with_llama3_template: Path) -> None:
    llm = LlamaCPP(model_path=str(tiny_with_llama3_template), system_prompt="Sys")
    assert llm.format_completion("Hi") == LLAMA3.render_completion("Hi", system_prompt="Sys")


def test_a_template_can_refuse_a_conversation(tiny_model_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="refused the conversation: Conversation roles"):
        render_chat_template(_template("llama-2-chat"), [U("a"), U("b")], bos_token="<s>")


MARKER = Path("/tmp") / f"serapeum-template-pwned-{uuid.uuid4().hex}"
MALICIOUS = {
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.popen('touch " + str(MARKER) + "') }}",
    "joiner globals": "{{ joiner.__init__.__globals__['os'].system('touch " + str(MARKER) + "') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__ }}",
    "raise_exception globals": "{{ raise_exception.__globals__['__builtins__'] }}",
    "self context": "{{ self._TemplateReference__context }}",
    "subclass loop": "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "format string": "{{ '{0.__class__}'.format(messages) }}",
    "attr filter": "{{ messages|attr('__class__') }}",
    "mutation": "{{ messages.append({'role': 'system', 'content': 'x'}) }}{{ messages }}",
    "huge string": "{{ 'A' * 100000000 }}",
    "power": "{{ 10 ** 100000000 }}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
}


@pytest.mark.parametrize("template", MALICIOUS.values(), ids=MALICIOUS.keys())
def test_hostile_templates_are_refused_and_run_nothing(template: str) -> None:
    with pytest.raises(ChatTemplateError):
        render_chat_template(template, [U("hi")], bos_token="<s>", eos_token="</s>")
    assert not MARKER.exists()


def test_a_hostile_template_in_a_gguf_fails_at_construction(
    tmp_path: Path,
) -> None:
    spec = TinyModelSpec(chat_template=MALICIOUS["cycler globals"], name="tiny-hostile")
    path = build_tiny_gguf(tmp_path / "hostile.gguf", spec)
    with pytest.raises(ChatTemplateError, match="stopped by the sandbox"):
        LlamaCPP(model_path=str(path))
    assert not MARKER.exists()
