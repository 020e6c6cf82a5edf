#!/usr/bin/env bash
# Writes the API manifest of one TensorRT version (its real Python bindings, imported over the
# stand-in libraries in stubs/): run it when a supported version is added, and commit the JSON.
#   tests/backends/tensorrt_api/make_manifest.sh 11.4.0.106      # 10.x: e.g. 10.3.0
set -euo pipefail
version=${1:?TensorRT version, e.g. 11.4.0.106}; major=${version%%.*}; here=$(cd "$(dirname "$0")" && pwd)
cuda=$([ "$major" -ge 11 ] && echo 13 || echo 12)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$here/stubs/build_stubs.sh" "$major" "$work/stubs"
python -m pip download -q --no-deps -d "$work/wheels" "tensorrt-cu$cuda-bindings==$version"
mkdir -p "$work/trt" && (cd "$work/trt" && unzip -q "$work"/wheels/*.whl)
LD_LIBRARY_PATH="$work/stubs" PYTHONPATH="$work/trt" python "$here/dump_manifest.py" "$here/manifests/trt-api-$version.json"
