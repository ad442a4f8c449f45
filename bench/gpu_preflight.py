"""The seconds-long check before a GPU window's slow steps (bench/gpu_check.py): is everything here?

Python and torch versions, the GPU (seen, named, a kernel runs on it), every import the steps need, the
versions of the packages that matter, the reference fixtures (the parity tests skip without them, and a
skipped parity test must not pass for a checked one). Writes its findings as JSON to --out and exits 1
with one line per problem.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What the steps import: the service, the model, the client, the tests' helpers, and their dependencies.
MODULES = (
    "numpy", "PIL", "cv2", "pycocotools.mask", "fastapi", "fastapi_offline", "starlette", "uvicorn", "pydantic",
    "pydantic_settings", "multipart", "orjson", "prometheus_client", "httpx", "pytest", "hypothesis",
    "centermask_client", "model.inference.load", "service.app", "bench.model_bench", "bench.load", "tests.helpers",
)  # fmt: skip
DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic-core",
)


def reference_fixtures() -> Path | None:
    for shared in (REPO / "shared", REPO.parent / "shared"):
        if (shared / "reference" / "fixtures").is_dir():
            return shared / "reference"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("gpu", "rehearse"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    problems: list[str] = []
    found: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}

    import torch

    found["torch"] = torch.__version__
    found["torch_cuda"] = torch.version.cuda
    found["cuda_available"] = torch.cuda.is_available()
    if args.mode == "gpu":
        if not torch.cuda.is_available():
            problems.append("no GPU seen: torch.cuda.is_available() is False")
        else:
            device = torch.device("cuda")
            properties = torch.cuda.get_device_properties(device)
            found["gpu"] = {
                "name": properties.name,
                "capability": f"{properties.major}.{properties.minor}",
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "multiprocessors": properties.multi_processor_count,
            }
            x = torch.randn(1024, 1024, device=device)
            torch.cuda.synchronize()
            found["gpu"]["matmul_checksum_finite"] = bool(torch.isfinite((x @ x).sum()).item())
            try:
                smi = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=10,
                )  # fmt: skip
                found["nvidia_smi"] = smi.stdout.strip()
            except (OSError, subprocess.TimeoutExpired) as error:
                found["nvidia_smi"] = f"unavailable: {error}"
    # The torch APIs the CUDA path uses, which older releases (the GPU image's 2.11) may lack.
    found["torch_api"] = {
        "compile_recompile_limit": "recompile_limit" in inspect.signature(torch.compile).parameters,
        "cuda_graph_capture_error_mode": "capture_error_mode"
        in inspect.signature(torch.cuda.graph).parameters,
    }
    imported = {}
    for name in MODULES:
        try:
            importlib.import_module(name)
            imported[name] = "ok"
        except Exception as error:  # every failure is a finding: which one, and why
            imported[name] = f"{type(error).__name__}: {error}"
            problems.append(f"cannot import {name}: {type(error).__name__}: {error}")
    found["imports"] = imported
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    found["versions"] = versions
    reference = reference_fixtures()
    found["reference_fixtures"] = str(reference) if reference else None
    if reference is None:
        message = "no reference fixtures (shared/reference): run python -m bench.gpu_wheels before the window"
        if args.mode == "gpu":
            problems.append(message)
        else:
            found["warning"] = message
    found["problems"] = problems
    args.out.write_text(json.dumps(found, indent=1))
    for problem in problems:
        print(f"preflight: {problem}", file=sys.stderr)
    print(json.dumps({k: v for k, v in found.items() if k != "imports"}))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
