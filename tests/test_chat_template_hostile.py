"""A GGUF's chat template cannot hang, exhaust memory or crash: it renders, or it is refused.

Real templates (the 22 official ones in tests/data) must render exactly as plain Jinja renders
them. Hostile ones (loops without calls, filters and string methods that allocate, format
widths, deep nesting, recursion, errors of every kind) must end in ``ChatTemplateError``.
Each hostile template runs in its own forked child, which measures how much the render
grew the process (``ru_maxrss``), so one that escaped the bounds fails its own test only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from serapeum.core.errors import SerapeumError
from serapeum.core.llms import Message
from serapeum.core.plugins import ModelInfo
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.chat_template import (
    MAX_OUTPUT_CHARS,
    ChatTemplateError,
    render_chat_template,
    template_formatter,
)
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf

TEMPLATES = json.loads((Path(__file__).parent / "data" / "chat-templates.json").read_text())
S, U, A = Message.system, Message.user, Message.assistant
TEN_TURNS = (
    [S("Be brief.")]
    + [
        message
        for turn in range(10)
        for message in (
            U(f"Question {turn}: what is {turn} + {turn}? <b>bold</b> & 'quotes'"),
            A(f"<think>adding</think>The answer is {2 * turn}."),
        )
    ]
    + [U("Thanks, and one more?")]
)
CONVERSATIONS = {
    "user": [U("Hello")],
    "system, user": [S("Be brief."), U("Hello")],
    "user, assistant, user": [U("Hello"), A("Hi."), U("Again")],
    "system, user, assistant, user": [S("Be brief."), U("Hello"), A("Hi."), U("Again")],
    "ten turns": TEN_TURNS,
}
MB = 1024 * 1024
RSS_LIMIT_MB = 256


class _Refused(Exception):
    pass


def _raise(message: str) -> None:
    raise _Refused(message)


def _plain_jinja(entry: dict[str, Any], messages: list[Message]) -> str | None:
    """What Hugging Face's own (unbounded) sandbox renders; None if the template refuses."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(
        raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt)
    )
    try:
        return env.from_string(entry["chat_template"]).render(
            messages=[{"role": m.role.value, "content": m.content} for m in messages],
            bos_token=entry["bos_token"] or "",
            eos_token=entry["eos_token"] or "",
            add_generation_prompt=True,
        )
    except _Refused:
        return None


def _info(entry: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        chat_template=entry["chat_template"],
        bos_token=entry["bos_token"] or "",
        eos_token=entry["eos_token"] or "",
    )


@pytest.mark.parametrize("entry", TEMPLATES, ids=[e["family"] for e in TEMPLATES])
def test_official_templates_render_exactly_as_plain_jinja(entry: dict[str, Any]) -> None:
    for shape, conversation in CONVERSATIONS.items():
        expected = _plain_jinja(entry, conversation)
        if expected is None:
            with pytest.raises(ChatTemplateError, match="refused the conversation"):
                template_formatter(_info(entry)).messages_to_prompt(conversation)
            continue
        rendered = render_chat_template(
            entry["chat_template"],
            conversation,
            bos_token=entry["bos_token"] or "",
            eos_token=entry["eos_token"] or "",
        )
        assert rendered == expected, shape
    if entry["rendered_hello"] and "strftime_now" not in entry["chat_template"]:
        formatter = template_formatter(_info(entry))  # passes the construction check
        assert formatter.messages_to_prompt([U("Hello")]) == entry["rendered_hello"]


def test_a_long_real_conversation_still_renders() -> None:
    """The bounds grow with the conversation: a prompt far over the base limits renders."""
    entry = next(e for e in TEMPLATES if e["family"] == "qwen3")
    turns = [m for i in range(40) for m in (U(f"{i} " + "word " * 8_000), A("ok " * 2_000))]
    prompt = template_formatter(_info(entry)).messages_to_prompt([*turns, U("last")])
    assert len(prompt) > 1.5 * MAX_OUTPUT_CHARS
    assert prompt == _plain_jinja(entry, [*turns, U("last")])
    one_huge_message = [U("x" * (3 * MAX_OUTPUT_CHARS))]
    llama3 = next(e for e in TEMPLATES if e["family"] == "llama-3-instruct")
    assert len(template_formatter(_info(llama3)).messages_to_prompt(one_huge_message)) > (
        3 * MAX_OUTPUT_CHARS
    )


FAILS_WITH_TWO_MESSAGES = (
    "{% if messages|length > 1 %}{{ 1 // 0 }}{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
)
REFUSES_A_SYSTEM_MESSAGE = (
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
)


def test_a_template_failing_only_for_longer_conversations_fails_at_construction() -> None:
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError") as caught:
        template_formatter(ModelInfo(chat_template=FAILS_WITH_TWO_MESSAGES))
    assert "formatter=" in str(caught.value)
    assert "test conversation: system, user" in str(caught.value)


def test_a_refusal_of_some_shapes_is_fine_at_construction() -> None:
    formatter = template_formatter(ModelInfo(chat_template=REFUSES_A_SYSTEM_MESSAGE))
    assert formatter.messages_to_prompt([U("a"), A("b"), U("c")]) == "abc"
    with pytest.raises(ChatTemplateError, match="refused the conversation: System role"):
        formatter.messages_to_prompt([S("s"), U("a")])


def test_a_template_refusing_a_single_user_message_fails_at_construction() -> None:
    with pytest.raises(ChatTemplateError, match="refused the conversation: never"):
        template_formatter(ModelInfo(chat_template="{{ raise_exception('never') }}"))


def test_a_gguf_whose_template_fails_for_longer_conversations_is_refused_at_load(
    tmp_path: Path,
) -> None:
    spec = TinyModelSpec(chat_template=FAILS_WITH_TWO_MESSAGES, name="tiny-fails-later")
    path = build_tiny_gguf(tmp_path / "fails-later.gguf", spec)
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        LlamaCPP(model_path=str(path))


ERRORS = {
    "{{ 1 / 0 }}": "ZeroDivisionError",
    "{{ 1 // 0 }}": "ZeroDivisionError",
    "{{ 1 % 0 }}": "ZeroDivisionError",
    "{{ (1e308 * 10)|int }}": "OverflowError",
    "{{ 1 + 'a' }}": "TypeError",
    "{{ x.y }}": "UndefinedError",
    "{{ messages[5] }}x{{ messages[5].content.strip() }}": "UndefinedError",
    "{% if %}": "does not compile",
    "{% for x in y %}": "does not compile",
    "{{ " + "9" * 5000 + " }}": "does not compile",
    "{% include 'other' %}": "TypeError",
    "{{ ''.__class__ }}": "stopped by the sandbox",
    "{{ 'a' * 100000000 }}": "stopped by the sandbox",
}


@pytest.mark.parametrize("template", ERRORS, ids=range(len(ERRORS)))
def test_every_error_is_a_typed_chat_template_error_that_names_the_cause(template: str) -> None:
    with pytest.raises(ChatTemplateError) as caught:
        render_chat_template(template, [U("hi")])
    error = caught.value
    assert isinstance(error, SerapeumError) and isinstance(error, ValueError)
    assert ERRORS[template] in str(error)
    assert "pass formatter=" in str(error)
    assert error.__cause__ is not None and error.__cause__.__traceback__ is None


def test_a_refusal_message_is_cut_short() -> None:
    with pytest.raises(ChatTemplateError) as caught:
        render_chat_template("{{ raise_exception('x' * 900000) }}", [U("hi")])
    assert len(str(caught.value)) < 1_000


HOSTILE = {
    # loops with no call inside
    "nested range loops": "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "nested string loops": "{% for x in 'a' * 1000000 %}{% for y in 'b' * 1000000 %}{% endfor %}"
    "{% endfor %}",
    "filtered loop": "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}"
    "{% endfor %}{% endfor %}",
    "recursive loop": "{% for i in range(100000) recursive %}{{ loop(range(100000)) }}{% endfor %}",
    # filters and globals that allocate or loop
    "lipsum": "{{ lipsum(1000000) }}",
    "lipsum words": "{{ lipsum(1, false, 1000000000, 1000000001) }}",
    "slice": "{{ range(10)|slice(100000000)|list }}",
    "center": "{{ 'a'|center(1000000000) }}",
    "format width": "{{ '%01000000000d'|format(1) }}",
    "format precision": "{{ '%.1000000000f'|format(1.0) }}",
    "join": "{{ range(100000)|map('string')|join('x' * 1000000) }}",
    "replace": "{{ ('x' * 1000)|replace('', 'y' * 1000000) }}",
    "tojson indent": "{{ [[[[1]]]]|tojson(indent=1000000000) }}",
    "indent": "{{ ('a\n' * 1000)|indent(1000000000) }}",
    "indent string": "{{ ('a\n' * 100000)|indent('x' * 1000) }}",
    "batch": "{{ [1]|batch(1000000000, 'x')|list }}",
    "list of a range": "{{ range(100000)|list|list|length }}",
    "list of a string": "{{ ('\u4e00' * 1000000)|list|length }}",
    "sum of lists": "{{ range(100000)|batch(1)|sum(start=[]) }}",
    "wordwrap": "{{ ('a' * 1000000)|wordwrap(1) }}",
    "title": "{{ ('a ' * 500000)|title }}",
    "pprint": "{{ range(100000)|list|pprint }}",
    "map center": "{{ messages|map(attribute='content')|map('center', 1000000000)|list }}",
    # operators
    "repeat string": "{{ 'x' * 1000000000 }}",
    "repeat reversed": "{{ 1000000000 * 'x' }}",
    "repeat list": "{{ ['x'] * 1000000000 }}",
    "repeat big items": "{% set b = 'x' * 1000000 %}{{ [b] * 1000 }}",
    "concat doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "plus doubling": "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "percent star": "{{ '%*d' % (1000000000, 1) }}",
    "percent mapping": "{% set b = 'x' * 100000 %}{{ ('%(a)s' * 100000) % {'a': b} }}",
    "power": "{{ 10 ** 100000000 }}",
    "integer squaring": "{% set ns = namespace(x=3) %}{% for i in range(100) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "division by zero": "{{ 1 / 0 }}",
    "float overflow": "{{ (1e308 * 10)|int }}",
    # Python methods reachable through the sandbox
    "str.format width": "{{ '{:>1000000000}'.format(1) }}",
    "str.format nested width": "{{ '{:{}}'.format(1, 1000000000) }}",
    "str.format fields": "{% set b = 'x' * 100000 %}{{ ('{0}' * 100000).format(b) }}",
    "format_map": "{{ '{a:>1000000000}'.format_map({'a': 1}) }}",
    "ljust": "{{ 'a'.ljust(1000000000) }}",
    "zfill": "{{ '1'.zfill(1000000000) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(1000000) }}",
    "str.replace": "{{ ('x' * 1000).replace('', 'y' * 100000) }}",
    "str.join": "{{ ('x' * 100).join(range(100000)|map('string')) }}",
    "translate": "{{ ('a' * 100000).translate({97: 'b' * 100000}) }}",
    "splitlines": "{{ ('\u4e00\n' * 400000).splitlines()|length }}",
    "to_bytes": "{{ (1).to_bytes(1000000000, 'big') }}",
    "fromkeys": "{{ {}.fromkeys(range(100000), 'x' * 1000000) }}",
    # growth kept across the render
    "namespace of lists": "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
    "{% set ns.l = ns.l + ['x' * 999990 ~ i] %}{% endfor %}",
    "namespace attributes": "{% set ns = namespace() %}"
    + "".join(f"{{% set ns.a{i} = 'x' * 999990 ~ {i} %}}" for i in range(1500)),
    "namespace doubling": "{% set ns = namespace(x=[]) %}{% for i in range(60) %}"
    "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x }}",
    "deep value to json": "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}"
    "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|tojson }}",
    "captured block": "{% set x %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    "{% endset %}{{ x|length }}",
    "captured text": "{% set x %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}"
    "{% endset %}{{ x|length }}",
    "filter block": "{% filter upper %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    "{% endfilter %}",
    "macro output": "{% macro m() %}{% for i in range(1000) %}{{ 'x' * 999999 }}{% endfor %}"
    "{% endmacro %}{{ m()|length }}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    # recursion and nesting
    "macro recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "growing recursion": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "5000 parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "5000 brackets": "{{ " + "[" * 5000 + "]" * 5000 + " }}",
    "5000 ifs": "{% if 1 %}" * 5000 + "x" + "{% endif %}" * 5000,
    "3000 ifs": "{% if 1 %}" * 3000 + "x" + "{% endif %}" * 3000,
    "5000 nots": "{{ " + "not " * 5000 + "1 }}",
    "long filter chain": "{{ 1" + "|string" * 5000 + " }}",
    "long attribute chain": "{{ x" + ".a" * 20000 + " }}",
    "many tokens": "{{ 1" + " + 1" * 24000 + " }}",
    "dense template": "{% set a = range(50000)|list %}{% set b = range(50000)|list %}"
    + "{% if a == b %}{% endif %}" * 1900
    + "{{ 1 // 0 }}",
}


RUNNER = r"""
import json, os, resource, select, signal, sys, time
from serapeum.core.llms import Message
from serapeum.llama_cpp.chat_template import ChatTemplateError, render_chat_template

render_chat_template("{{ messages[0].content|upper }}", [Message.user("warm up")])
HANG_GUARD = float(sys.argv[1])

def render(template):
    try:  # a guard for the machine: a render that escaped the bounds must not eat it
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        text = render_chat_template(template, [Message.user("hi")], bos_token="<s>")
        outcome, message = "rendered", "%d characters" % len(text)
    except ChatTemplateError as exc:
        outcome, message = "ChatTemplateError", str(exc)
    except BaseException as exc:
        outcome, message = type(exc).__name__, str(exc)[:500]
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"outcome": outcome, "message": message, "seconds": seconds, "rss_kb": grown}

for line in sys.stdin:
    template = json.loads(line)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(render(template)).encode())
        os._exit(0)
    os.close(write)
    data, deadline = b"", time.monotonic() + HANG_GUARD
    while True:
        ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if data:
        result = json.loads(data)
    elif status == signal.SIGKILL:
        result = {"outcome": "hung (killed after %.0f s)" % HANG_GUARD}
    else:
        result = {"outcome": "died (wait status %d)" % status}
    print(json.dumps(result), flush=True)
"""
HANG_GUARD_SECONDS = 120  # a hang detector for a shared CI machine, not a speed limit


@pytest.fixture(scope="module")
def hostile_runner() -> Iterator[subprocess.Popen[str]]:
    """A child that imports once, then forks a fresh grandchild for each template."""
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(HANG_GUARD_SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield runner
    assert runner.stdin is not None
    runner.stdin.close()
    runner.wait(timeout=60)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_template_is_refused_without_growing_the_process(
    name: str, hostile_runner: subprocess.Popen[str]
) -> None:
    assert hostile_runner.stdin is not None and hostile_runner.stdout is not None
    hostile_runner.stdin.write(json.dumps(HOSTILE[name]) + "\n")
    hostile_runner.stdin.flush()
    result = json.loads(hostile_runner.stdout.readline())
    assert result["outcome"] == "ChatTemplateError", result
    assert "ran out of memory" not in result["message"], result
    assert result["rss_kb"] * 1024 < RSS_LIMIT_MB * MB, result
    print(f"{name}: {result['seconds']:.2f} s, +{result['rss_kb'] / 1024:.0f} MB")


def test_renders_in_threads_keep_their_own_budgets() -> None:
    """A hostile render running out its time in one thread does not stop others."""
    from concurrent.futures import ThreadPoolExecutor

    llama3 = next(e for e in TEMPLATES if e["family"] == "llama-3-instruct")
    expected = _plain_jinja(llama3, TEN_TURNS)
    spin = "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}"

    def hostile() -> str:
        with pytest.raises(ChatTemplateError, match="stopped by the sandbox"):
            render_chat_template(spin, [U("hi")])
        return "refused"

    def real() -> bool:
        return all(
            render_chat_template(llama3["chat_template"], TEN_TURNS, bos_token="<|begin_of_text|>")
            == expected
            for _ in range(50)
        )

    with ThreadPoolExecutor(4) as pool:
        refused = [pool.submit(hostile) for _ in range(2)]
        rendered = [pool.submit(real) for _ in range(2)]
        assert [f.result() for f in refused] == ["refused", "refused"]
        assert all(f.result() for f in rendered)


SEMANTICS = {
    # comparisons (rewritten into checkpoints) keep Python's chained meaning
    "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 'z' not in ['a'] }}": (
        "True False True True"
    ),
    # a namespace prints without its contents (a self-reference cannot blow up)
    "{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns }} {{ ns.b.b.a }}": "<Namespace> 1",
    # ~ inside an autoescape block escapes what is not Markup, as Jinja does
    "{% set a = messages[0].content ~ '<' %}{% autoescape true %}{{ a ~ ('<b>'|safe) }}"
    "{% endautoescape %}": "hi&lt;<b>",
    "{{ '{:>5}|{}'.format('ab', 1) }} {{ '%-4s|%03d'|format('x', 7) }}": "   ab|1 x   |007",
    "{% set x %}{% for i in range(3) %}{{ i }},{% endfor %}{% endset %}{{ x|upper }}": "0,1,2,",
    "{{ [1, 2, 3][1:]|sum }} {{ [[1], [2]]|sum(start=[]) }} {{ range(3)|join('-') }}": (
        "5 [1, 2] 0-1-2"
    ),
    "{% for x in [3, 1, 2] if x > 1 %}{{ loop.index }}/{{ loop.length }} {% endfor %}": (
        "1/2 2/2 "
    ),
}


@pytest.mark.parametrize("template", SEMANTICS, ids=range(len(SEMANTICS)))
def test_checkpointed_constructs_keep_jinja_semantics(template: str) -> None:
    assert render_chat_template(template, [U("hi")]) == SEMANTICS[template]
    if "namespace" not in template:  # the one deliberate difference
        plain = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
        messages = [{"role": "user", "content": "hi"}]
        assert plain.from_string(template).render(messages=messages) == SEMANTICS[template]
