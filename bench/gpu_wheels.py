"""What a GPU window carries: the pinned wheels of bench/gpu/requirements.lock, and the reference fixtures.

    python -m bench.gpu_wheels                 # here, with pip access: fill .whl/ and shared/reference/
    python -m bench.gpu_wheels --check .whl    # anywhere: the folder holds exactly the lock, nothing else

The GPU machines reach no package index and see only the working tree, so both go into it, in folders git
ignores (`.whl/`, `shared/`), named in the device call's `carry`. Filling starts from an empty `.whl/` (two
versions of one package make pip refuse the whole install), downloads each pinned wheel alone
(`--no-deps`), and then checks that every requirement of every wheel is met by the lock or by the image's
packages (bench/gpu/image-packages.txt), so a missing dependency shows here, not in the window.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "bench" / "gpu" / "requirements.lock"
IMAGE_PACKAGES = REPO / "bench" / "gpu" / "image-packages.txt"
WHEELS = REPO / ".whl"
REFERENCE = REPO / "shared" / "reference"
# The GPU machines: CPython 3.12, x86-64 Linux with a recent glibc. pip matches manylinux tags exactly.
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64"]
# What one device call may carry, the working tree included.
CARRY_LIMIT_BYTES = 64 * 2**20


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """Package name (canonical) → pinned version."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def image_packages(path: Path = IMAGE_PACKAGES) -> set[str]:
    return {canonical(line) for line in path.read_text().splitlines() if line and not line.startswith("#")}


def wheel_identity(wheel: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    name, version = wheel.name.split("-")[:2]
    return canonical(name), version


def requirements(wheel: Path) -> list[str]:
    """The canonical names a wheel requires unconditionally (no extras; markers other than extras kept)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    names = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.split(":", 1)[1].strip()
        if "extra ==" in requirement.replace(" ", "").replace("extra==", "extra =="):
            continue
        if "python_version <" in requirement and "3.1" in requirement:  # backports for older Pythons
            continue
        names.append(canonical(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return names


def check(folder: Path) -> list[str]:
    """Problems with a wheel folder: not exactly the lock, one of each, with every requirement met."""
    pins = read_lock()
    wheels = sorted(folder.glob("*.whl"))
    found: dict[str, list[str]] = {}
    for wheel in wheels:
        name, version = wheel_identity(wheel)
        found.setdefault(name, []).append(version)
    problems = [
        f"{name}: {len(versions)} wheels ({', '.join(versions)})"
        for name, versions in found.items()
        if len(versions) > 1
    ]
    problems += [f"{name}=={version} is missing" for name, version in pins.items() if name not in found]
    problems += [
        f"{name} {versions[0]} is not the pinned {pins[name]}"
        for name, versions in found.items()
        if name in pins and versions[0] != pins[name]
    ]
    problems += [f"{name} is not in the lock" for name in found if name not in pins]
    available = set(pins) | image_packages()
    for wheel in wheels:
        missing = [name for name in requirements(wheel) if name not in available]
        if missing:
            problems.append(f"{wheel.name} requires {', '.join(missing)}, neither pinned nor on the image")
    return problems


def fill(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    for name, version in read_lock().items():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
             "--dest", str(folder), f"{name}=={version}"],
            check=True,
        )  # fmt: skip


def copy_reference(source: Path) -> None:
    if REFERENCE.exists():
        shutil.rmtree(REFERENCE)
    shutil.copytree(source, REFERENCE)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", type=Path, metavar="FOLDER", help="only check a wheel folder against the lock"
    )
    parser.add_argument(
        "--into", type=Path, default=WHEELS, help=f"the wheel folder to fill (default {WHEELS})"
    )
    parser.add_argument(
        "--reference", type=Path, default=REPO.parent / "shared" / "reference",
        help="the reference fixtures to copy into shared/reference (default ../shared/reference)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.check is not None:
        problems = check(args.check)
        for problem in problems:
            print(f"wheels: {problem}", file=sys.stderr)
        return 1 if problems else 0
    fill(args.into)
    problems = check(args.into)
    if problems:
        for problem in problems:
            print(f"wheels: {problem}", file=sys.stderr)
        return 1
    if args.reference.resolve() != REFERENCE.resolve():
        if not args.reference.is_dir():
            print(
                f"no reference fixtures at {args.reference}: the GPU parity tests would skip", file=sys.stderr
            )
            return 1
        copy_reference(args.reference)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree = sum(
        (REPO / name).stat().st_size
        for name in tracked.decode().split("\0")
        if name and (REPO / name).is_file()
    )
    total = tree + size(args.into) + size(REFERENCE)
    print(
        f"{len(read_lock())} wheels ({size(args.into) / 2**20:.1f} MiB) in {args.into}, reference fixtures "
        f"({size(REFERENCE) / 2**20:.1f} MiB) in {REFERENCE}; with the tree {total / 2**20:.1f} MiB of the "
        f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB a call carries"
    )
    return 0 if total <= CARRY_LIMIT_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())
