#!/usr/bin/env bash
# Wheels that bench/gpu_check.sh needs on a GPU machine without a package index (Python 3.12, x86-64 Linux):
# the service's and tests' dependencies that such images lack (their PyTorch, NumPy and Pillow are used as
# they are). Run on a machine with pip access, from the repository root; writes .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  fastapi starlette uvicorn h11 click python-multipart pydantic pydantic-core pydantic-settings
  python-dotenv annotated-types annotated-doc typing-inspection typing-extensions anyio sniffio idna
  orjson prometheus-client pycocotools httpx httpcore certifi hypothesis sortedcontainers attrs
)
platforms=()
for tag in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
mkdir -p .whl
for package in "${packages[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$package"
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
du -sh .whl
