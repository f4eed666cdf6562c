#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what bench/device_check.sh needs on a GPU machine that has torch,
# torchvision and timm but no network: DeepSpeed (an sdist on PyPI, built here into a pure-Python
# wheel) and its dependencies that such an image lacks or may hold too old (typing-extensions >= 4.14.1 for
# pydantic-core), for CPython 3.12 on x86-64 Linux.
# Run it from the repository root on a machine with pip access.
set -euo pipefail
mkdir -p .whl
python -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 typing-extensions==4.16.0 \
  hjson==3.1.0
ls -l .whl
