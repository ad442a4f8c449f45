"""Helpers shared by every test package: the real server in a subprocess, reached over loopback HTTP."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
# Generous: the machine is shared, and nothing here should take long unless something is wrong.
STARTUP_TIMEOUT_S = 120
TIMEOUT_S = 60
# The API key of the `tiny_server` fixture.
TINY_SERVER_KEY = "tiny-server-key"
# What the `centermask-serve` console script (and the image's ENTRYPOINT) runs, without the package installed.
CENTERMASK_SERVE = [sys.executable, "-c", "from service.server import main; main()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen, so the kernel cannot hand
    the same port out twice (as two calls of `free_port` can)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def clean_environment(**settings: str) -> dict[str, str]:
    """The test process's environment without CENTERMASK_* variables, plus `settings`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CENTERMASK_")}
    return clean | settings


def metric_families(text: str) -> dict[str, Any]:
    """Prometheus exposition text → its metric families by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


@dataclass(frozen=True)
class LiveServer:
    """A running `centermask-serve`, reached over loopback HTTP."""

    process: subprocess.Popen
    port: int
    log: Path
    # The gRPC port (0: the server runs none).
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        families = metric_families(httpx.get(f"{self.url}/metrics", timeout=TIMEOUT_S).text)
        wanted = labels or {}
        for family in families.values():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                    return sample.value
        return 0.0

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Poll `condition` until it holds; fail after `timeout_s`, or as soon as the server exits."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, (
                f"the server exited while waiting for {what}\n{self.log.read_text()}"
            )
            assert time.monotonic() < deadline, f"no {what} after {timeout_s} s\n{self.log.read_text()}"
            time.sleep(0.02)

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet


@contextlib.contextmanager
def live_server(
    log: Path, *flags: str, command: Sequence[str] = CENTERMASK_SERVE, **settings: str
) -> Iterator[LiveServer]:
    """`command` (by default `centermask-serve`) on a free 127.0.0.1 port with these flags and environment
    `settings`, once /readyz answers 200; killed afterwards if still running. Output goes to `log`. Its gRPC
    server gets a free port too, unless `--grpc-port` or CENTERMASK_GRPC_PORT says otherwise."""
    port, spare_port = free_ports(2)
    grpc: list[str] = []
    grpc_port = int(settings.get("CENTERMASK_GRPC_PORT", 0))
    if "--grpc-port" in flags:
        grpc_port = int(flags[list(flags).index("--grpc-port") + 1])
    elif "CENTERMASK_GRPC_PORT" not in settings:
        grpc_port = spare_port
        grpc = ["--grpc-port", str(grpc_port)]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *grpc, *flags],
            cwd=REPO,
            env=clean_environment(**settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, port, log, grpc_port)
    try:
        server.wait_for(server.is_ready, "readiness", STARTUP_TIMEOUT_S)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def corrupted_mid_file(video: bytes) -> tuple[bytes, int]:
    """The video with a run of its frames' bytes overwritten, so that decoding fails after some good frames;
    and how many frames decode before the failure (found by decoding it here, as the service will)."""
    import av

    from centermask_client.video import VideoReader

    for percent in range(50, 95, 5):
        broken = bytearray(video)
        start = len(video) * percent // 100
        broken[start : start + 200] = b"\xff" * 200
        good = 0
        try:
            with VideoReader(bytes(broken)) as reader:
                for _ in reader.frames():
                    good += 1
        except av.error.FFmpegError:
            if good:
                return bytes(broken), good
        except ValueError:  # the header was hit
            continue
    raise AssertionError("no corruption of this video fails after its first frame")


@dataclass(frozen=True)
class TrackScore:
    """How a tracked answer follows a clip's ground truth (`training.data.clips.moving_scenes`).

    Each frame's instances are matched to the ground-truth objects (box IoU ≥ 0.5, greedily by IoU).
    `ids[k]`: the track ids of object k's matches in frame order (None: matched, not confirmed).
    """

    frames: int
    objects: int
    ids: list[list[int | None]]

    @property
    def switches(self) -> int:
        """ID switches: times an object's track id differs from its previous one (nulls skipped)."""
        total = 0
        for ids in self.ids:
            given = [i for i in ids if i is not None]
            total += sum(1 for before, after in itertools.pairwise(given) if before != after)
        return total

    @property
    def shared_ids(self) -> set[int]:
        """Track ids given to more than one object."""
        owners: dict[int, set[int]] = {}
        for number, ids in enumerate(self.ids):
            for track_id in ids:
                if track_id is not None:
                    owners.setdefault(track_id, set()).add(number)
        return {track_id for track_id, objects in owners.items() if len(objects) > 1}

    @property
    def tracked(self) -> float:
        """The fraction of object-frames matched by an instance with a track id."""
        return sum(1 for ids in self.ids for i in ids if i is not None) / (self.frames * self.objects)


def box_iou(a: Any, b: Any) -> Any:
    """IoU (n, m) of boxes (n, 4) and (m, 4), [x1, y1, x2, y2]."""
    import numpy as np

    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def track_score(truth: Sequence[Any], answers: Sequence[Sequence[dict[str, Any]]]) -> TrackScore:
    """Score answered frames (each a list of instance records with `box`, `track_id`) against the ground
    truth boxes (objects, 4) of the same frames."""
    objects = len(truth[0])
    ids: list[list[int | None]] = [[] for _ in range(objects)]
    for boxes, instances in zip(truth, answers, strict=True):
        if not instances:
            continue
        iou = box_iou(boxes, [instance["box"] for instance in instances])
        matched_objects: set[int] = set()
        matched_instances: set[int] = set()
        for flat in iou.flatten().argsort()[::-1]:
            number, found = divmod(int(flat), len(instances))
            if iou[number, found] < 0.5:
                break
            if number in matched_objects or found in matched_instances:
                continue
            matched_objects.add(number)
            matched_instances.add(found)
            ids[number].append(instances[found].get("track_id"))
    return TrackScore(len(truth), objects, ids)
