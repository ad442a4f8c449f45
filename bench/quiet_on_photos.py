"""How many shapes a checkpoint finds on ordinary photographs, at the service's defaults.

    python -m bench.quiet_on_photos [--weights W ...] [--extra] [--also PATH ...] [--json OUT] [--record NAME]

The shapes model should find (almost) nothing on a photo. The photographs are the ones scikit-image ships in
its wheel (`skimage/data`, no download; evaluation only, never trained on): people (astronaut, camera),
an animal (chelsea), objects (coffee, coins, rocket, motorcycle, clock) and textures (brick, grass,
gravel); `--extra` adds six other kinds of imagery (moon, Hubble deep field, retina, immunohistochemistry,
a scanned page, text on a sign), reported separately; `--also` adds your own photographs (files, or folders
of them), reported in a section of their own with their own averages. Each file is decoded as the service
decodes uploads (`model.inference.images.load_rgb`: greyscale becomes RGB), then predicted as the service
does by default: detections scoring ≥ 0.3 (at most 100), class-agnostic NMS at IoU 0.7. Prints, per
weights file and photo, the count of detections ≥ 0.3 and ≥ 0.7 and their classes, then the averages over
the eleven photographs.
`--record NAME` stores the counts in each checkpoint's metadata under ``evaluations[NAME]``, as
`training.evaluate --record` stores AP.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from model.inference.detections import CLASS_AGNOSTIC_IOU, Selection
from model.inference.images import load_rgb
from model.inference.load import load_predictor
from model.weights.checkpoint import read_checkpoint, update_metadata

# name → file in skimage/data. The eleven ordinary photographs the targets are about.
PHOTOS = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "clock": "clock_motion.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
# Other imagery: reported, not part of the averages.
EXTRA = {
    "moon": "moon.png",
    "hubble": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "ihc": "ihc.png",
    "page": "page.png",
    "text": "text.png",
}
SCORE_THRESHOLD = 0.3  # the service default (service/settings.py)
HIGH = 0.7
MAX_DETECTIONS = 100


def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError:
        sys.exit("needs scikit-image for its bundled photographs: pip install scikit-image")
    return Path(skimage.__file__).parent / "data"


def count(predictor: Any, image: Any, names: list[str]) -> dict[str, Any]:
    selection = Selection(SCORE_THRESHOLD, MAX_DETECTIONS)
    detections = predictor.predict([image], selection)[0].class_agnostic_nms(CLASS_AGNOSTIC_IOU)
    scores = detections.scores
    high = scores >= HIGH
    return {
        "size": list(image.shape[:2]),
        "at_0.3": int((scores >= SCORE_THRESHOLD).sum()),
        "at_0.7": int(high.sum()),
        "max_score": float(scores.max()) if len(scores) else 0.0,
        "classes": dict(Counter(names[c] for c in detections.class_ids.tolist())),
        "high_classes": dict(Counter(names[c] for c in detections.class_ids[high].tolist())),
    }


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def own_photos(paths: list[Path]) -> dict[str, Path]:
    """`--also`: each file, and each image file in each folder, by its path as given."""
    found: dict[str, Path] = {}
    for path in paths:
        files = (
            sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in files:
            found[str(file)] = file
    return found


def averages(counts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mean_at_0.3": sum(p["at_0.3"] for p in counts) / max(len(counts), 1),
        "mean_at_0.7": sum(p["at_0.7"] for p in counts) / max(len(counts), 1),
        "photos_with_any_at_0.7": sum(p["at_0.7"] > 0 for p in counts),
    }


def measure(weights: str | None, photos: dict[str, Path], also: dict[str, Path]) -> dict[str, Any]:
    predictor = load_predictor(weights)
    names = list(predictor.class_names)
    per_photo = {name: count(predictor, load_rgb(path), names) for name, path in photos.items()}
    result = {"weights": weights or "bundled", "photos": per_photo}
    result |= averages([per_photo[name] for name in PHOTOS if name in per_photo])
    if also:
        own = {name: count(predictor, load_rgb(path), names) for name, path in also.items()}
        result["also"] = {"photos": own} | averages(list(own.values()))
    return result


def summary(what: str, means: dict[str, Any]) -> str:
    return (
        f"mean over {what}: {means['mean_at_0.3']:.2f} ≥ 0.3, {means['mean_at_0.7']:.2f} ≥ 0.7 "
        f"({means['photos_with_any_at_0.7']} photos with any ≥ 0.7)"
    )


def print_rows(per_photo: dict[str, dict[str, Any]], width: int = 12) -> None:
    for name, p in per_photo.items():
        if name == next(iter(EXTRA)):
            print("-- other imagery (not averaged)")
        size = "x".join(map(str, p["size"]))
        classes = ", ".join(f"{k} {v}" for k, v in sorted(p["classes"].items()))
        print(
            f"{name:<{width}} {size:>9} {p['at_0.3']:>5} {p['at_0.7']:>5} {p['max_score']:>5.2f}  {classes}"
        )


def print_result(result: dict[str, Any]) -> None:
    print(f"\n{result['weights']}")
    print(f"{'photo':<12} {'size':>9} {'≥0.3':>5} {'≥0.7':>5} {'max':>5}  classes (≥0.3)")
    print_rows(result["photos"])
    print(summary(f"the {len(PHOTOS)} photographs", result))
    if "also" in result:
        own = result["also"]
        print("-- your photographs (--also)")
        print_rows(own["photos"], max(12, *(len(name) for name in own["photos"])))
        print(summary(f"your {len(own['photos'])} photographs", own))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quiet_on_photos", description=__doc__)
    parser.add_argument("--weights", nargs="+", default=[None], help="checkpoints (default: the bundled one)")
    parser.add_argument("--extra", action="store_true", help="also the six other images, not averaged")
    parser.add_argument(
        "--also",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        help="your own photographs: files or folders",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--record", metavar="NAME", help="store the counts in each checkpoint's metadata")
    args = parser.parse_args(argv)
    data = skimage_data_dir()
    chosen = PHOTOS | (EXTRA if args.extra else {})
    photos = {name: data / file for name, file in chosen.items()}
    also = own_photos(args.also)
    missing = [str(path) for path in also.values() if not path.is_file()]
    if missing or (args.also and not also):
        parser.error(f"--also: no image file at {', '.join(missing) or ' '.join(map(str, args.also))}")
    results = []
    for weights in args.weights:
        result = measure(weights, photos, also)
        print_result(result)
        results.append(result)
        if args.record:
            if weights is None:
                parser.error("--record needs --weights: the bundled file is updated by naming it")
            entry = {
                "counts": {k: v for k, v in result.items() if k not in ("weights", "also")},
                "evaluated_on": {
                    "photos": {name: f"skimage/data/{file}" for name, file in chosen.items()},
                    "score_threshold": SCORE_THRESHOLD,
                    "class_agnostic_iou": CLASS_AGNOSTIC_IOU,
                    "max_detections": MAX_DETECTIONS,
                },
            }
            evaluations = read_checkpoint(weights).metadata.get("evaluations", {})
            update_metadata(weights, {"evaluations": {**evaluations, args.record: entry}})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
