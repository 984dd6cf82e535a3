#!/usr/bin/env bash
# Builds the CUDA kernels into OUT_DIR/kernels.fatbin (cubin for sm_90, PTX for compute_90 so newer GPUs
# JIT it) when nvcc is on the PATH; otherwise writes OUT_DIR/kernels-missing.txt saying why, which the
# cuda device provider reports. Run by Maven at generate-resources: build-kernels.sh SRC_DIR OUT_DIR
set -euo pipefail
src="$1"
out="$2"
mkdir -p "$out"
nvcc_bin="${NVCC:-nvcc}"
# A fatbin newer than every source (and this script) is up to date: nvcc takes most of a module build.
if command -v "$nvcc_bin" >/dev/null 2>&1 && [ -f "$out/kernels.fatbin" ] \
    && [ -z "$(find "$src" -newer "$out/kernels.fatbin" -type f -print -quit)" ]; then
  exit 0
fi
rm -f "$out/kernels.fatbin" "$out/kernels-missing.txt"
if ! command -v "$nvcc_bin" >/dev/null 2>&1; then
  echo "the CUDA kernels were not built into this jar: $nvcc_bin was not found on the PATH of the machine that built it" > "$out/kernels-missing.txt"
  echo "build-kernels: $nvcc_bin not found; cuda-ops ships without CUDA kernels" >&2
  exit 0
fi
"$nvcc_bin" -fatbin -O3 -std=c++17 \
  -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
  -o "$out/kernels.fatbin" "$src/kernels.cu"
