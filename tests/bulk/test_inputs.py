"""What a job's INPUTs name: folders, globs, COCO files, lists and fsspec URLs → images with stable ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from bulk.inputs import Image, InputError, find_images


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def memory() -> Iterator[fsspec.AbstractFileSystem]:
    """fsspec's in-memory filesystem, emptied after the test (it is one store per process)."""
    filesystem = fsspec.filesystem("memory")
    yield filesystem
    filesystem.store.clear()
    filesystem.pseudo_dirs.clear()
    filesystem.pseudo_dirs.append("")


def test_a_folder_gives_its_image_files_recursively_sorted(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt", "sub/d.tiff"):
        touch(tmp_path / name)
    images = find_images([str(tmp_path)])
    assert images == [
        Image(1, str(tmp_path / "a.JPG")),
        Image(2, str(tmp_path / "b.png")),
        Image(3, str(tmp_path / "sub/c.webp")),
        Image(4, str(tmp_path / "sub/d.tiff")),
    ]


def test_globs_files_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("x/1.png", "x/2.jpg", "x/3.png", "y/4.png"):
        touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    images = find_images(["x/*.png", "y/4.png", "x/1.png"])
    # Absolute, in command order, each file once (x/1.png twice).
    assert [image.location for image in images] == [
        str(tmp_path / "x/1.png"),
        str(tmp_path / "x/3.png"),
        str(tmp_path / "y/4.png"),
    ]
    assert [image.image_id for image in images] == [1, 2, 3]


def test_a_coco_file_keeps_its_ids_and_others_follow(tmp_path: Path) -> None:
    coco = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 3, "file_name": "sub/b.png"}]}
    touch(tmp_path / "data/val.json", json.dumps(coco).encode())
    touch(tmp_path / "extra/c.png")
    images = find_images([str(tmp_path / "data/val.json"), str(tmp_path / "extra")])
    assert images == [
        Image(7, str(tmp_path / "data/a.png")),
        Image(3, str(tmp_path / "data/sub/b.png")),
        Image(8, str(tmp_path / "extra/c.png")),
    ]
    # --image-root: where the file_names are.
    rooted = find_images([str(tmp_path / "data/val.json")], image_root=str(tmp_path / "pictures"))
    assert rooted[0] == Image(7, str(tmp_path / "pictures/a.png"))


def test_a_list_of_paths_relative_to_itself(tmp_path: Path) -> None:
    touch(tmp_path / "lists/paths.txt", b"# some photos\n\nimages/a.png\n/abs/b.jpg\nmemory://bucket/c.png\n")
    images = find_images([str(tmp_path / "lists/paths.txt")])
    # Entries are not checked up front: one that cannot be read becomes a failed row.
    assert [image.location for image in images] == [
        str(tmp_path / "lists/images/a.png"),
        "/abs/b.jpg",
        "memory:///bucket/c.png",
    ]


def test_fsspec_urls(memory: fsspec.AbstractFileSystem) -> None:
    for name in ("photos/a.png", "photos/deep/b.jpg", "photos/readme.md"):
        memory.pipe_file(f"/bucket/{name}", b"x")
    memory.pipe_file(
        "/bucket/val.json", json.dumps({"images": [{"id": 1, "file_name": "photos/a.png"}]}).encode()
    )
    assert [image.location for image in find_images(["memory://bucket/photos"])] == [
        "memory:///bucket/photos/a.png",
        "memory:///bucket/photos/deep/b.jpg",
    ]
    assert [image.location for image in find_images(["memory://bucket/photos/**/*.jpg"])] == [
        "memory:///bucket/photos/deep/b.jpg"
    ]
    assert find_images(["memory://bucket/val.json"]) == [Image(1, "memory:///bucket/photos/a.png")]


def test_the_output_inside_an_input_folder_is_not_an_input(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    touch(tmp_path / "out/overlays/1-a.png")
    assert [i.location for i in find_images([str(tmp_path)], exclude=str(tmp_path / "out"))] == [
        str(tmp_path / "a.png")
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"annotations": []}', "has no `images` list"),
        (b'{"images": [{"id": "1", "file_name": "a.png"}]}', "images[0] needs an integer `id`"),
        (b'{"images": [{"id": true, "file_name": "a.png"}]}', "images[0] needs an integer `id`"),
    ],
)
def test_a_bad_coco_file_is_refused_saying_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = touch(tmp_path / "bad.json", content)
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        find_images([str(path)])


def test_inputs_that_name_nothing_are_refused(tmp_path: Path) -> None:
    touch(tmp_path / "empty/notes.txt")
    with pytest.raises(InputError, match="no such file or directory"):
        find_images([str(tmp_path / "missing")])
    with pytest.raises(InputError, match="no images there"):
        find_images([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="no images there"):
        find_images([str(tmp_path / "*.png")])


def test_one_id_for_two_files_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "a.json", json.dumps({"images": [{"id": 1, "file_name": "x.png"}]}).encode())
    touch(tmp_path / "b.json", json.dumps({"images": [{"id": 1, "file_name": "y.png"}]}).encode())
    with pytest.raises(InputError, match="image id 1 is"):
        find_images([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
