"""A Hub file whose blob name is not its content: ``model_sha256`` must still hold.

An LFS blob is named by the ETag the server sent (``X-Linked-Etag``), which an
``HF_ENDPOINT`` mirror chooses freely. The check took that name as the file's SHA-256, so
a mirror serving other bytes under the right name, or a blob changed on disk, passed
``model_sha256`` (before the fix this test failed: no error was raised).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from serapeum.core.plugins import ModelRequest
from serapeum_source_hf import HF_SOURCE, HfChecksumMismatchError

REPO = "serapeum/tiny-GGUF"


def _request(**fields: object) -> ModelRequest:
    return ModelRequest(hf_model_id=REPO, hf_filename="tiny.gguf", **fields)  # type: ignore[arg-type]


def test_a_blob_whose_bytes_are_not_its_name_fails_model_sha256(
    hub_env, tiny_model_path: Path, tiny_llama3_model_path: Path
) -> None:
    good = tiny_model_path.read_bytes()
    other = tiny_llama3_model_path.read_bytes()
    hub_env.repo(REPO).add_commit("first", {"tiny.gguf": good}, "main")
    path = HF_SOURCE.resolve(_request())
    expected = hashlib.sha256(good).hexdigest()
    blob = Path(os.path.realpath(path))
    assert blob.name == expected  # the cache names the blob by the claimed SHA-256
    blob.write_bytes(other)  # what a lying mirror would have stored under that name
    with pytest.raises(HfChecksumMismatchError) as caught:
        HF_SOURCE.resolve(_request(options={"sha256": expected}))
    assert caught.value.actual == hashlib.sha256(other).hexdigest()
    assert caught.value.kept is True  # it was already cached: kept, and said so
    assert blob.read_bytes() == other
