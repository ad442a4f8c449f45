"""The container's root filesystem is read-only (k8s/, docker-compose.yml): the server must write
nowhere but its scratch directory. Checked with an audit hook that reports every file the server
process opens for writing, creates, renames or removes, while it serves every kind of request."""

import signal
import sys
from pathlib import Path

import httpx

from tests.helpers import live_server
from tests.service.helpers import TIMEOUT_S, encode, random_image, wait_for_exit

# Runs in the server process before anything is imported. The report goes to a duplicate of stdout
# made before the hook is installed, so reporting never reports itself.
AUDIT = """
import os, sys
report = os.fdopen(os.dup(1), "w", buffering=1)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link",
           "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.copyfile"}

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            report.write("WRITE " + os.fsdecode(path) + "\\n")
    elif event in CHANGES and args and isinstance(args[0], (str, bytes, os.PathLike)):
        report.write("WRITE " + os.fsdecode(args[0]) + "\\n")

sys.addaudithook(audit)
from service.server import main
main()
"""


def test_the_server_writes_only_to_its_scratch_directory(small_weights: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    home = tmp_path / "home"  # as in the image: HOME exists, but nothing may be written there
    home.mkdir()
    # The variables k8s/base/deployment.yaml and docker/Dockerfile set, with the scratch directory for
    # /tmp (this process's own TORCHINDUCTOR_CACHE_DIR, which importing torch sets, must not leak in).
    cache = scratch / ".cache"
    environment = {
        "TMPDIR": str(scratch),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(cache),
        "TORCH_HOME": str(cache / "torch"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "CUDA_CACHE_PATH": str(cache / "nv"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    log = tmp_path / "server.log"
    command = [sys.executable, "-c", AUDIT]
    flags = ("--weights", str(small_weights), "--max-batch-size", "2")
    with live_server(log, *flags, command=command, **environment) as server:
        image = encode(random_image(0, 48, 64))
        # Over a megabyte: the multipart parser spools it to a temporary file.
        large = encode(random_image(1, 700, 900)[:, :, :3], "BMP")
        assert len(large) > 1024 * 1024
        with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
            assert (
                client.post("/segment", content=image, headers={"Content-Type": "image/png"}).status_code
                == 200
            )
            assert (
                client.post("/segment", files={"image": ("big.bmp", large, "image/bmp")}).status_code == 200
            )
            files = [("images", (f"{i}.png", image, "image/png")) for i in range(3)]
            assert client.post("/segment/batch", files=files).status_code == 200
            assert (
                client.post("/segment", content=b"junk", headers={"Content-Type": "image/png"}).status_code
                == 400
            )
            assert client.get("/metrics").status_code == 200
            assert client.get("/v1/model").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert wait_for_exit(server.process) in (0, -signal.SIGTERM)

    written = {
        line.removeprefix("WRITE ") for line in log.read_text().splitlines() if line.startswith("WRITE ")
    }
    outside = {
        path
        for path in written
        if path != "/dev/null" and not Path(path).resolve().is_relative_to(scratch.resolve())
    }
    assert not outside, f"the server wrote outside its scratch directory: {sorted(outside)}"
    assert any(Path(path).resolve().is_relative_to(scratch.resolve()) for path in written), (
        "the spooled upload should have been seen in the scratch directory: is the audit hook working?"
    )
    assert list(home.iterdir()) == []
