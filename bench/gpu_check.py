"""Every CUDA check and GPU figure of the project in one call that fits one GPU window, and its CPU rehearsal.

    here, before a window:  python -m bench.gpu_wheels     (pinned wheels into .whl/, fixtures into shared/)
    on the GPU machine:     OUT=<folder> bash bench/gpu_check.sh               (the call carries .whl)
    anywhere, on the CPU:   OUT=<folder> bash bench/gpu_check.sh --rehearse    (CI runs it)

A window is short (15 minutes of machine time in all, a cold start included, 10 minutes a command) and its
results come back only through $OUT (8 files at most), so: the wheels are checked against the lock and
installed first, and a failed install stops the run; a preflight of seconds (Python, torch, the GPU, every
import, the reference fixtures) stops it with one clear line before anything slow; then each step runs with
its own time limit, inside an overall deadline, whatever the steps before it did, and writes its JSON into
$OUT as it goes. $OUT then holds: summary.json (rewritten after every step: versions, each step's status
and seconds), steps.log (every step's output), tests.xml, model.json, graphs.json, roofline.json, load.json.

The rehearsal runs the same steps the same way on the CPU, at tiny sizes: the wheels are installed for
Python 3.12 into a scratch folder (checking that they would install there, not importing them), the CUDA
tests are collected and skip, and every benchmark runs its whole path. So the script cannot rot between
windows. This file needs the standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
PY312 = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    flag
    for tag in [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)]
    + ["manylinux2014_x86_64"]
    for flag in ("--platform", tag)
]
LITE = "centermask_lite_V_39_eSE_FPN_ms_4x"
FULL = "centermask_V_99_eSE_FPN_ms_3x"
TINY = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
# Whole runs, the wheels and the preflight included: an H100 window's call, and the rehearsal on 2 CPU cores.
DEADLINE_S = {"gpu": 290, "rehearse": 240}


@dataclass(frozen=True)
class Step:
    name: str
    seconds: dict[str, int]  # the step's own limit, per mode
    command: dict[str, list[str]]  # per mode; {out} is $OUT


def steps(out: Path) -> list[Step]:
    python = [sys.executable, "-m"]
    # The GPU's figures: lite V-39 and V-99 at the official test size. The rehearsal's: the smallest config,
    # its rule weights at a 64/128 test resize, one thread, a couple of runs.
    gpu = ["--device", "cuda", "--threads", "8"]
    cpu = ["--device", "cpu", "--threads", "1", "--rule-test-size", "64", "128"]
    tiny = ["--config", TINY, "--precision", "fp32", "--size", "96x128"]
    tests = [*python, "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs"]
    tests += [f"--junitxml={out / 'tests.xml'}", *cuda_test_files()]
    model = [*python, "bench.model_bench", "--out", str(out / "model.json")]
    graphs = [*python, "bench.model_bench", "--cuda-graphs", "off", "on", "--out", str(out / "graphs.json")]
    roofline = [*python, "bench.roofline", "--out", str(out / "roofline.json")]
    load = [*python, "bench.load", "--spawn", "--out", str(out / "load.json")]
    return [
        Step("tests", {"gpu": 75, "rehearse": 45}, {"gpu": tests, "rehearse": tests}),
        Step(
            "model",
            {"gpu": 50, "rehearse": 40},
            {
                "gpu": [*model, *gpu, "--config", LITE, FULL, "--precision", "fp32", "fp16", "--size", "480x640",
                        "--batch-size", "8", "32", "--runs", "8", "--warmup", "2"],
                "rehearse": [*model, *cpu, *tiny, "--batch-size", "1", "2", "--runs", "2", "--warmup", "1"],
            },
        ),
        Step(
            "graphs",
            {"gpu": 25, "rehearse": 30},
            {
                "gpu": [*graphs, *gpu, "--config", LITE, "--precision", "fp16", "--size", "480x640",
                        "--batch-size", "1", "8", "--runs", "10", "--warmup", "2"],
                "rehearse": [*graphs, *cpu, *tiny, "--batch-size", "1", "--runs", "2", "--warmup", "1"],
            },
        ),
        Step(
            "roofline",
            {"gpu": 20, "rehearse": 25},
            {
                "gpu": [*roofline, *gpu, "--config", LITE, FULL, "--precision", "fp32", "bf16", "fp16",
                        "--runs", "5"],
                "rehearse": [*roofline, *cpu, *tiny, "--runs", "2"],
            },
        ),
        Step(
            "load",
            {"gpu": 60, "rehearse": 60},
            {
                "gpu": [*load, *gpu, "--precision", "fp16", "--rule-config", LITE, "--batch-size", "16",
                        "--concurrency", "16", "64", "--requests", "3000", "--duration", "12",
                        "--in-process-seconds", "5", "--ready-timeout", "45"],
                "rehearse": [*load, *cpu, "--rule-config", TINY, "--concurrency", "1", "2", "--requests", "6",
                             "--duration", "5", "--in-process-seconds", "2", "--height", "96", "--width", "128",
                             "--ready-timeout", "40"],
            },
        ),
    ]  # fmt: skip


def cuda_test_files() -> list[str]:
    """The test modules that hold CUDA-marked tests: collecting only them keeps modules that import packages a
    GPU machine lacks (a browser driver, a spec validator) out of the run."""
    return sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if "mark.cuda" in path.read_text()
    )


class Run:
    """The run's record: summary.json and steps.log in $OUT, written as it goes."""

    def __init__(self, mode: str, out: Path) -> None:
        self.mode, self.out = mode, out
        self.started = time.monotonic()
        self.deadline = self.started + DEADLINE_S[mode]
        self.log = (out / "steps.log").open("a", buffering=1)
        self.summary: dict[str, object] = {
            "mode": mode,
            "python": platform.python_version(),
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "deadline_s": DEADLINE_S[mode],
            "steps": [],
            "status": "running",
        }
        self.save()

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        partial = self.out / "summary.json.partial"
        partial.write_text(json.dumps(self.summary, indent=1))
        partial.replace(self.out / "summary.json")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def run(self, name: str, command: list[str], limit_s: float, env: dict[str, str]) -> dict[str, object]:
        """Run one command with its output in the log; its record (status: passed, failed or timeout)."""
        limit_s = max(0.0, min(limit_s, self.deadline - time.monotonic()))
        record: dict[str, object] = {"name": name, "limit_s": round(limit_s, 1)}
        if limit_s < 3:
            record.update(status="skipped", reason="no time left before the deadline")
            self.say(f"== {name}: skipped, no time left")
            return record
        self.say(f"== {name} (limit {limit_s:.0f} s): {' '.join(command)}")
        started = time.monotonic()
        # A session of its own: at the limit the step goes with everything it started (a spawned server).
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(limit_s)
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = "timeout"
        record.update(status=status, seconds=round(time.monotonic() - started, 1))
        self.say(f"== {name}: {status} in {record['seconds']} s")
        return record

    def finish(self, status: str, code: int) -> int:
        self.summary["status"] = status
        self.save()
        self.say(f"== {status} in {self.summary['elapsed_s']} s ({self.mode})")
        return code


def install_wheels(run: Run, env: dict[str, str], scratch: Path) -> bool:
    """Check the wheel folder against the lock, and install it: for this Python on the GPU machine, and for
    Python 3.12 into a scratch folder in a rehearsal (fetching the pinned wheels first when there is no .whl)."""
    folder = WHEELS
    if run.mode == "rehearse" and not folder.is_dir():
        folder = scratch / "whl"
        fetched = run.run(
            "wheels-fetch", [sys.executable, "-m", "bench.gpu_wheels", "--into", str(folder),
                             "--reference", str(REPO / "shared" / "reference")], 120, env,
        )  # fmt: skip
        if fetched["status"] != "passed":
            run.summary["wheels"] = fetched
            return False
    if not folder.is_dir():
        run.summary["wheels"] = {"status": "none carried", "folder": str(folder)}
        run.say("== wheels: no .whl/ carried; the machine's own packages must do (the preflight checks)")
        return True
    checked = run.run(
        "wheels-check", [sys.executable, "-m", "bench.gpu_wheels", "--check", str(folder)], 30, env
    )
    if checked["status"] != "passed":
        run.summary["wheels"] = checked
        return False
    target = scratch / "site"
    tags = PY312 if run.mode == "rehearse" else []
    install = run.run(
        "wheels-install",
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", *tags, "--target", str(target),
         *map(str, sorted(folder.glob("*.whl")))],
        60, env,
    )  # fmt: skip
    run.summary["wheels"] = {**install, "count": len(list(folder.glob("*.whl")))}
    if install["status"] != "passed":
        return False
    if run.mode == "gpu":
        env["PYTHONPATH"] = os.pathsep.join([str(target), env["PYTHONPATH"]])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="run every step on the CPU, at tiny sizes")
    args = parser.parse_args(argv)
    if not os.environ.get("OUT"):
        parser.error("set OUT to the folder the results go to")
    out = Path(os.environ["OUT"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Run("rehearse" if args.rehearse else "gpu", out)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The checkout's packages, the client's from its own folder (it is not installed on a GPU machine).
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "clients" / "python"), *filter(None, [env.get("PYTHONPATH")])]
    )
    scratch = Path(tempfile.mkdtemp(prefix="centermask-gpu-check-"))
    try:
        if not install_wheels(run, env, scratch):
            return run.finish("aborted: the wheels did not install (see steps.log)", 2)
        preflight = run.run(
            "preflight", [sys.executable, "-m", "bench.gpu_preflight", "--mode", run.mode,
                          "--out", str(out / "summary.json.preflight")], 40, env,
        )  # fmt: skip
        report = out / "summary.json.preflight"
        if report.is_file():
            run.summary["preflight"] = json.loads(report.read_text())
            report.unlink()
        if preflight["status"] != "passed":
            return run.finish(f"aborted: the preflight failed ({preflight['status']}; see steps.log)", 2)
        records: list[dict[str, object]] = []
        run.summary["steps"] = records
        for step in steps(out):
            records.append(run.run(step.name, step.command[run.mode], step.seconds[run.mode], env))
            run.save()
        failed = [r["name"] for r in records if r["status"] != "passed"]
        if failed:
            return run.finish(f"failed: {', '.join(map(str, failed))}", 1)
        return run.finish("passed", 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
