"""What a bulk job segments: its INPUT arguments → the job's images, each an (image id, location) pair.

An INPUT is a local path or an fsspec URL (`s3://bucket/photos/`, `gs://...`, `file:///data/...`, any
protocol whose fsspec backend is installed) naming one of:

* a directory: every image file under it, recursively (the suffixes `centermask segment` takes);
* a glob (`photos/**/*.jpg`): the image files it matches;
* a COCO annotation file (`*.json` with an `images` list): each image, with the file's own image id, at
  `file_name` under `--image-root` (default: the annotation file's directory);
* a text file of paths or URLs (`*.txt`, `*.lst`), one a line (blank lines and `#` comments skipped);
  relative ones are relative to the list's directory;
* any other file: that one image.

Entries of COCO files and lists are not checked here: one that cannot be read becomes a failed row with its
error, like any unreadable image, so a list of ten million S3 keys costs no ten million requests up front.

Ids: a COCO file's images keep theirs (the results then evaluate against it); every other image gets the next
one after the largest COCO id, in the order found (inputs in command order, each one's files sorted). A path
found twice is one image; two COCO files giving one id to different files is an error. The ids are assigned
once, when the job starts, and stored with it (`bulk.manifest`), so a resumed job keeps them.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from centermask_client.cli import IMAGE_SUFFIXES

COCO_SUFFIXES = frozenset({".json"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})
_GLOB_CHARACTERS = frozenset("*?[")


class InputError(ValueError):
    """An INPUT that names nothing usable: the message says which and why."""


@dataclass(frozen=True)
class Image:
    """One image of a job: its id (the COCO image id of the results) and where it is read from."""

    image_id: int
    location: str


def is_url(location: str) -> bool:
    """Whether a location is an fsspec URL (`s3://...`) rather than a local path."""
    return "://" in location


def local_path(location: str) -> str | None:
    """The local path a location names (a plain path or a `file://` URL), or None for other URLs."""
    if not is_url(location):
        return str(Path(location).expanduser().resolve())
    if location.startswith("file://"):
        return str(Path(location.removeprefix("file://")).resolve())
    return None


def normalise(location: str) -> str:
    """A location in the form the job stores: an absolute local path, or the URL as fsspec spells it."""
    local = local_path(location)
    if local is not None:
        return local
    filesystem, path = fsspec.core.url_to_fs(location)
    return str(filesystem.unstrip_protocol(path))


def find_images(
    inputs: Sequence[str], image_root: str | None = None, exclude: str | None = None
) -> list[Image]:
    """Every image the INPUTs name, with its id (see the module's docstring). `exclude`: a location whose
    contents are never inputs (the job's output, when it lies inside an input folder)."""
    if not inputs:
        raise InputError("no INPUT given")
    excluded = normalise(exclude).rstrip("/") + "/" if exclude else None
    with_ids: list[tuple[int, str, str]] = []  # (id, location, the INPUT that gave it)
    without: list[str] = []
    for given in inputs:
        found_any = False
        for image_id, location in _expand(given, image_root):
            if excluded is not None and location.startswith(excluded):
                continue
            found_any = True
            if image_id is None:
                without.append(location)
            else:
                with_ids.append((image_id, location, given))
        if not found_any:
            raise InputError(f"{given}: no images there (image files are {_suffixes()})")

    images: list[Image] = []
    owners: dict[int, tuple[str, str]] = {}
    for image_id, location, given in with_ids:
        previous = owners.get(image_id)
        if previous is None:
            owners[image_id] = (location, given)
            images.append(Image(image_id, location))
        elif previous[0] != location:
            raise InputError(
                f"image id {image_id} is {previous[0]} in {previous[1]} but {location} in {given}: "
                "segment these annotation files in separate jobs"
            )
    seen = {image.location for image in images}
    next_id = max(owners, default=0) + 1
    for location in without:
        if location not in seen:
            seen.add(location)
            images.append(Image(next_id, location))
            next_id += 1
    return images


def _suffixes() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _expand(given: str, image_root: str | None) -> Iterator[tuple[int | None, str]]:
    """(COCO id or None, normalised location) of each image one INPUT names."""
    location = local_path(given) or given
    filesystem, path = fsspec.core.url_to_fs(location)

    def full(found: str) -> str:
        return found if isinstance(filesystem, LocalFileSystem) else str(filesystem.unstrip_protocol(found))

    if _GLOB_CHARACTERS & set(path):
        matches = [found for found in filesystem.glob(path) if filesystem.isfile(found) and _is_image(found)]
        for found in sorted(matches):
            yield None, full(found)
        return
    if filesystem.isdir(path):
        for found in sorted(filesystem.find(path)):
            if _is_image(found):
                yield None, full(found)
        return
    if not filesystem.isfile(path):
        raise InputError(f"{given}: no such file or directory")
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in COCO_SUFFIXES:
        root = image_root if image_root is not None else full(posixpath.dirname(path))
        for image_id, file_name in _coco_images(filesystem.cat_file(path), given):
            yield image_id, _join(root, file_name)
    elif suffix in LIST_SUFFIXES:
        base = full(posixpath.dirname(path))
        for entry in _list_entries(filesystem.cat_file(path), given):
            yield None, _join(base, entry)
    else:
        yield None, full(path)


def _join(root: str, name: str) -> str:
    """`name` (a path, absolute or relative, or a URL) as a normalised location relative to `root`."""
    if is_url(name) or posixpath.isabs(name):
        return normalise(name)
    if is_url(root):
        return root.rstrip("/") + "/" + name
    return str(Path(root, name).resolve())


def _coco_images(data: bytes, given: str) -> Iterator[tuple[int, str]]:
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{given}: not valid JSON ({error})") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{given}: not a COCO annotation file (it has no `images` list)")
    for index, entry in enumerate(images):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        # bool is an int to Python, not an id to anyone.
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(file_name, str):
            raise InputError(f"{given}: images[{index}] needs an integer `id` and a string `file_name`")
        if not file_name:
            raise InputError(f"{given}: images[{index}] has an empty `file_name`")
        yield image_id, file_name


def _list_entries(data: bytes, given: str) -> Iterator[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{given}: a list of paths must be UTF-8 text") from None
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry
