"""Where benchmarks put their numbers: one JSON file per run, with what produced them.

By default bench/results/<benchmark>-<UTC time>.json at the end of the run. With `--out FILE` (a GPU window,
bench/gpu_check.sh) that file, rewritten after every row: a run cut short by its time limit still leaves
the rows it measured, marked `"complete": false`.
"""

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


def write_result(
    benchmark: str,
    parameters: dict[str, Any],
    rows: list[dict[str, Any]],
    out: Path | None = None,
    *,
    complete: bool = True,
) -> Path:
    """Write the run's JSON to `out`, or to bench/results/<benchmark>-<UTC time>.json; return its path."""
    now = datetime.datetime.now(datetime.UTC)
    if out is None:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"{benchmark}-{now:%Y%m%dT%H%M%SZ}.json"
    payload = {
        "benchmark": benchmark,
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "parameters": parameters,
        "complete": complete,
        "rows": rows,
    }
    temporary = out.with_name(out.name + ".partial")
    temporary.write_text(json.dumps(payload, indent=1, default=str))
    temporary.replace(out)  # a reader never sees half a file
    if complete:
        print(f"→ {out}", file=sys.stderr)
    return out


class Results:
    """A run's rows as they come: with `out`, the file is rewritten after each (see the module's docstring)."""

    def __init__(self, benchmark: str, parameters: dict[str, Any], out: Path | None) -> None:
        self.benchmark, self.parameters, self.out = benchmark, parameters, out
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.out is not None:
            write_result(self.benchmark, self.parameters, self.rows, self.out, complete=False)

    def finish(self, **summary: Any) -> Path:
        self.parameters.update(summary)
        return write_result(self.benchmark, self.parameters, self.rows, self.out)
