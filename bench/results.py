"""Where benchmarks put their numbers: one JSON file per run in bench/results/, with what produced them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(benchmark: str, parameters: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write bench/results/<benchmark>-<UTC time>.json and return its path."""
    now = datetime.datetime.now(datetime.UTC)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{benchmark}-{now:%Y%m%dT%H%M%SZ}.json"
    payload = {
        "benchmark": benchmark,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "parameters": parameters,
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"→ {path.relative_to(RESULTS_DIR.parent.parent)}", file=sys.stderr)
    return path
