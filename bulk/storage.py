"""Where a job writes: a local directory or an fsspec URL, written only in whole files.

Every file appears complete or not at all, which is what lets a job be killed at any moment: locally a file is
written beside its final name, flushed to disk and renamed over it (rename is atomic within a directory, and
the directory is flushed too, so the rename survives a power cut); on an object store (S3, GCS) an object
written in one request is atomic already. Leftover temporary files of a killed run are removed when the
next one opens the output.

One job at a time may write an output: locally a lock (`flock`, released by the kernel when the holder dies,
however it dies) refuses a second one. Object stores have no such lock; do not start two jobs on one URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from bulk.inputs import local_path

_TEMPORARY = ".tmp-"


class OutputLocked(RuntimeError):
    """Another job is writing the same output."""


@dataclass
class Output:
    """An output location: `root` on `filesystem` (paths inside are relative to it, with `/`)."""

    filesystem: Any
    root: str

    @classmethod
    def open(cls, location: str) -> Output:
        local = local_path(location)
        if local is not None:
            return cls(LocalFileSystem(), local)
        filesystem, root = fsspec.core.url_to_fs(location)
        return cls(filesystem, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, LocalFileSystem)

    @property
    def url(self) -> str:
        return self.root if self.is_local else str(self.filesystem.unstrip_protocol(self.root))

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def exists(self, name: str) -> bool:
        return bool(self.filesystem.exists(self.path(name)))

    def read(self, name: str) -> bytes:
        return bytes(self.filesystem.cat_file(self.path(name)))

    def open_file(self, name: str) -> IO[bytes]:
        handle: IO[bytes] = self.filesystem.open(self.path(name), "rb")
        return handle

    def sizes(self, folder: str) -> dict[str, int]:
        """Name → size in bytes of the files directly in `folder` (none if it does not exist); temporary
        files left by a killed run are not listed."""
        directory = self.path(folder)
        if not self.filesystem.isdir(directory):
            return {}
        listing = self.filesystem.ls(directory, detail=True)
        return {
            posixpath.basename(entry["name"]): int(entry["size"])
            for entry in listing
            if entry["type"] == "file" and _TEMPORARY not in posixpath.basename(entry["name"])
        }

    def write(self, name: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old file or the new one, never a part."""
        target = self.path(name)
        if not self.is_local:
            # One request: the object store makes it visible whole or not at all.
            self.filesystem.pipe_file(target, data)
            return
        directory = posixpath.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temporary = posixpath.join(directory, f".{posixpath.basename(target)}{_TEMPORARY}{os.getpid()}")
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
        _fsync_directory(directory)

    def write_stream(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A file written piece by piece that appears, whole, when the block ends without an error."""
        return _streamed(self, name)

    def remove(self, name: str) -> None:
        target = self.path(name)
        if self.filesystem.exists(target):
            self.filesystem.rm_file(target)
            if self.is_local:
                _fsync_directory(posixpath.dirname(target))

    def remove_temporaries(self, folder: str = "") -> None:
        """Delete the temporary files a killed run left (locally; object stores have none)."""
        directory = self.path(folder) if folder else self.root
        if not self.is_local or not os.path.isdir(directory):
            return
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.startswith(".") and _TEMPORARY in entry.name:
                os.unlink(entry.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the output for this process (locally; see the module's docstring for object stores)."""
        if not self.is_local:
            yield
            return
        os.makedirs(self.root, exist_ok=True)
        descriptor = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLocked(
                    f"another centermask-bulk is writing {self.root}; wait for it or give another --output"
                ) from None
            yield
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _streamed(output: Output, name: str) -> Iterator[IO[bytes]]:
    target = output.path(name)
    if not output.is_local:
        # Spooled to a local file and uploaded in one call once complete: an object-store file object would
        # upload what it holds when closed, an exception's way out included.
        with tempfile.NamedTemporaryFile(prefix="centermask-bulk-") as spool:
            yield spool
            spool.flush()
            output.filesystem.put_file(spool.name, target)
        return
    directory = posixpath.dirname(target)
    os.makedirs(directory, exist_ok=True)
    temporary = posixpath.join(directory, f".{posixpath.basename(target)}{_TEMPORARY}{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
        _fsync_directory(directory)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
