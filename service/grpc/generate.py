"""`python -m service.grpc.generate`: the Python modules of `grpc_predict_v2.proto`, written beside it.

The modules are shipped generated (the image and a plain install need no protoc); this regenerates them
after the proto changes, and `tests/service/test_grpc_stubs.py` checks that the shipped ones are what it
would write. Needs `grpcio-tools` (the `grpc` extra's development half: `pip install grpcio-tools`).

One change to protoc's output: the messages live in a descriptor pool of their own, not in protobuf's
default pool. tritonclient registers its own copy of the same protocol (package `inference`) in the
default pool, and one pool refuses a second definition of a message name: with a pool of our own, the
service and tritonclient can be imported into one process (a test, a benchmark, a gateway).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("grpc_predict_v2.proto")
# The folder the proto's import path is relative to: generated imports then read `service.grpc.…`.
_ROOT = PROTO.parents[2]
_DEFAULT_POOL = "_descriptor_pool.Default()"
_OWN_POOL = "_descriptor_pool.DescriptorPool()"


def generated() -> dict[str, str]:
    """Module file name → text, as protoc (grpcio-tools) generates them for the proto today."""
    from grpc_tools import protoc  # a development dependency, needed only here

    relative = PROTO.relative_to(_ROOT)
    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{_ROOT}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(relative),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {relative} (status {status})")
        folder = Path(out) / relative.parent
        texts = {path.name: path.read_text() for path in sorted(folder.iterdir()) if path.is_file()}
    module = relative.stem + "_pb2.py"
    if texts[module].count(_DEFAULT_POOL) != 1:
        raise RuntimeError(
            f"protoc's {module} no longer registers through {_DEFAULT_POOL}: review generate.py"
        )
    texts[module] = texts[module].replace(_DEFAULT_POOL, _OWN_POOL)
    return texts


def main() -> None:
    for name, text in generated().items():
        PROTO.with_name(name).write_text(text)
        print(f"wrote {PROTO.with_name(name).relative_to(_ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
