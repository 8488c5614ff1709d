#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp vendored in the pinned
# llama-cpp-python sdist, so server-backend tests and benches talk to the same llama.cpp
# the in-process backend runs. Prints the binary's path as its last line; does nothing
# (but print it) when the binary is already built.
#
# Environment:
#   SERAPEUM_LLAMA_CPP_VERSION  llama-cpp-python version (default: the installed one in
#                               .venv, else 0.3.36)
#   SERAPEUM_SDIST_DIR          an already unpacked sdist to build from (skips the download)
#   SERAPEUM_LLAMA_SERVER_BUILD_DIR  where to unpack and build (default:
#                               ${XDG_CACHE_HOME:-~/.cache}/serapeum/llama-server/<version>)
#   SERAPEUM_BUILD_JOBS         parallel compile jobs (default: nproc)
#
# Use the result with: export SERAPEUM_LLAMA_SERVER=<printed path>
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${repo_root}/.venv/bin/python"
[[ -x "$python" ]] || python="$(command -v python3)"

log() { printf '%s\n' "build-llama-server: $*" >&2; }

version="${SERAPEUM_LLAMA_CPP_VERSION:-}"
if [[ -z "$version" ]]; then
    version="$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)"
fi
version="${version:-0.3.36}"

build_root="${SERAPEUM_LLAMA_SERVER_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/serapeum/llama-server/${version}}"
build_dir="${build_root}/build"
binary="${build_dir}/bin/llama-server"

if [[ -x "$binary" ]]; then
    log "already built (llama-cpp-python ${version})"
    printf '%s\n' "$binary"
    exit 0
fi

mkdir -p "$build_root"

if [[ -n "${SERAPEUM_SDIST_DIR:-}" ]]; then
    sdist_dir="$SERAPEUM_SDIST_DIR"
else
    sdist_dir="${build_root}/llama_cpp_python-${version}"
    if [[ ! -d "$sdist_dir" ]]; then
        download_dir="${build_root}/download"
        mkdir -p "$download_dir"
        log "downloading the llama-cpp-python ${version} sdist"
        "$python" -m pip download --no-binary :all: --no-deps \
            --dest "$download_dir" "llama-cpp-python==${version}" >&2
        archive=""
        for candidate in "$download_dir"/llama_cpp_python-"${version}".tar.gz \
            "$download_dir"/llama-cpp-python-"${version}".tar.gz; do
            if [[ -f "$candidate" ]]; then archive="$candidate"; break; fi
        done
        [[ -n "$archive" ]] || { log "no sdist archive in $download_dir"; exit 1; }
        tar -xzf "$archive" -C "$build_root"
        # The archive's top folder may use either spelling of the name.
        [[ -d "$sdist_dir" ]] || sdist_dir="${build_root}/llama-cpp-python-${version}"
    fi
fi

source_dir="${sdist_dir}/vendor/llama.cpp"
[[ -f "${source_dir}/CMakeLists.txt" ]] || { log "no llama.cpp sources in ${source_dir}"; exit 1; }

jobs="${SERAPEUM_BUILD_JOBS:-$(nproc)}"
log "configuring ${source_dir} into ${build_dir}"
# Server only: no curl (no model downloads), no tests or examples, no web UI (neither an
# npm build nor a prebuilt download), tuned for this machine.
cmake -S "$source_dir" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DGGML_NATIVE=ON >&2
log "building llama-server with ${jobs} jobs"
cmake --build "$build_dir" --target llama-server -j "$jobs" >&2

[[ -x "$binary" ]] || { log "build finished but ${binary} is missing"; exit 1; }
printf '%s\n' "$binary"
