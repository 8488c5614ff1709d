"""The checked load (a child process tries the file first) and templates llama-cpp-python never sees."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serapeum.core.errors import SerapeumError
from serapeum.llama_cpp import checked_load as checked_load_module
from serapeum.llama_cpp.checked_load import checked_load, forget_verdicts
from serapeum.llama_cpp.errors import ModelLoadError, UnsafeModelError
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf


def _with_block_count(source: Path, target: Path, value: int) -> Path:
    """A copy of ``source`` whose ``llama.block_count`` says ``value`` (tensors unchanged)."""
    import gguf

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(str(target), "r+")
    field = reader.fields["llama.block_count"]
    field.parts[field.data[0]][0] = value
    del reader
    return target


@pytest.fixture
def crashing_model(tmp_path: Path, tiny_model_path: Path) -> Path:
    """A file llama.cpp aborts on (SIGABRT), confirmed in a child process."""
    path = _with_block_count(tiny_model_path, tmp_path / "zero-layers.gguf", 0)
    raw = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, llama_cpp; llama_cpp.Llama(sys.argv[1], verbose=False)",
            str(path),
        ],
        capture_output=True,
        timeout=60,
    )
    assert raw.returncode in (-6, 134), "llama.cpp no longer aborts here: pick another crash"
    return path


def test_a_file_that_crashes_llama_cpp_is_refused_by_a_child(
    crashing_model: Path, cache_root: Path
) -> None:
    forget_verdicts()
    with pytest.raises(UnsafeModelError, match="SIGABRT") as caught:
        checked_load(crashing_model)
    assert isinstance(caught.value, SerapeumError)
    assert "download or convert it again" in str(caught.value)
    assert list((cache_root / "checked-loads").glob("*.json")), "the verdict is kept on disk"


def test_a_verdict_is_reused_from_disk(
    crashing_model: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_verdicts()
    with pytest.raises(UnsafeModelError):
        checked_load(crashing_model)
    forget_verdicts()

    # Counting child processes is what this test is about, so the probe is replaced by
    # one that fails the test if it is reached.
    def no_probe(path: Path, timeout: float) -> None:
        raise AssertionError("the probe ran again for a file with a recorded verdict")

    monkeypatch.setattr(checked_load_module, "_probe", no_probe)
    with pytest.raises(UnsafeModelError):
        checked_load(crashing_model)


def test_a_rewritten_file_is_probed_again(
    crashing_model: Path, tiny_model_path: Path, cache_root: Path
) -> None:
    forget_verdicts()
    with pytest.raises(UnsafeModelError):
        checked_load(crashing_model)
    shutil.copyfile(tiny_model_path, crashing_model)  # fixed in place: a new identity
    checked_load(crashing_model)


def test_a_good_file_passes(tiny_model_path: Path, cache_root: Path) -> None:
    forget_verdicts()
    checked_load(tiny_model_path)
    checked_load(tiny_model_path)  # the second time from memory


def test_a_clean_refusal_is_a_load_error(
    tmp_path: Path, tiny_model_path: Path, cache_root: Path
) -> None:
    # Architecture "llama" with a tensor missing: llama.cpp refuses it with an exception.
    import gguf

    broken = tmp_path / "missing-tensor.gguf"
    reader = gguf.GGUFReader(str(tiny_model_path))
    writer = gguf.GGUFWriter(str(broken), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.name != "output_norm.weight":
            writer.add_tensor(
                tensor.name, tensor.data, raw_shape=list(reversed(tensor.shape.tolist()))
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    forget_verdicts()
    with pytest.raises(ModelLoadError) as caught:
        checked_load(broken)
    assert not isinstance(caught.value, UnsafeModelError)


RSS_OF_CONSTRUCTION = """
import resource, sys
from serapeum.llama_cpp import LlamaCPP
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
llm = LlamaCPP(model_path=sys.argv[1], formatter="llama2", checked_load=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, llm.loaded_model.info.chat_template[:20])
"""


@pytest.mark.parametrize(
    "template",
    ["{{ 'a' * 1000000000 }}", "{% if %}broken", "{% for %}" * 1000],
    ids=["memory-bomb", "syntax-error", "deep-garbage"],
)
def test_llama_cpp_python_never_compiles_the_files_template(tmp_path: Path, template: str) -> None:
    path = build_tiny_gguf(tmp_path / "hostile.gguf", TinyModelSpec(chat_template=template))
    result = subprocess.run(
        [sys.executable, "-c", RSS_OF_CONSTRUCTION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    grown_mb, head = result.stdout.split(" ", 1)
    assert int(grown_mb) < 256
    assert head.strip() == template[:20].strip()  # we still read it (to render it ourselves)
