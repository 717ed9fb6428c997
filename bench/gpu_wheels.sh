#!/usr/bin/env bash
# Fetches the wheels that bench/gpu_check.sh installs on the GPU machine, which has torch 2.11 +
# CUDA 13 on Python 3.12 but not these packages and no network. Run here (with network):
#   bash bench/gpu_wheels.sh            # -> .whl/ (git-ignored), < 10 MiB in all
# then the device run carries `.whl`. torchao 0.18.0 is the release whose C++ extensions require
# torch >= 2.11 (its __init__ says so), and the fp8 paths used here are Triton + torch ops.
# pydantic and pydantic-core must be the pair pip resolves together (pydantic pins core exactly).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl \
  torchao==0.18.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0
ls -l .whl
du -sh .whl
