"""Inference API (what the service calls) and the `python -m model.predict` command line.

The JSON it writes is the service's (`model.wire`, documented in `centermask_client.schemas`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.backends import Backend, backend_device, check_backend
from model.centermask import CenterMask, NetworkSteps
from model.checkpoint import file_sha256, load_model, resolve_category_ids
from model.coco_classes import default_category_ids
from model.dense import DenseRunner, check_cuda_graphs
from model.detections import CLASS_AGNOSTIC_IOU, Detections, Selection
from model.fcos import Proposals
from model.images import DecodedImage, ImageError, load_image
from model.precision import Precision, check_supported
from model.processing import PreparedImage, padded_shape, prepare_image, scale_boxes
from model.quantize import CALIBRATION_IMAGES
from model.wire import image_record

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "centermask_lite_V_19_slim_shapes.pth"


# Padded-shape buckets of the fast GPU path: with 128 px steps a lite model (600/1000) sees 8 shapes of
# ordinary photos instead of 26, so mixed traffic still fills batches. Exact mode pads as the official code.
FAST_BUCKET_SIZE = 128


class Predictor:
    """A loaded CenterMask model with its preprocessing and postprocessing. Build once, reuse.

    The network is rewritten for inference when the predictor is built (batch norms folded, channels-last
    weights, the precision's dtype): pass it a freshly loaded model, which it then owns. Or pass another
    backend's network (`model.onnx_backend.OnnxCenterMask`, built for inference already).

    `bucket_size` is the multiple that padded image sizes are rounded up to. Images of the same padded shape
    can share a forward pass; an image's padded shape depends on its own size alone, so a result never depends
    on its batch-mates. The default, 32, is the official padding (results exact); on CUDA in bf16/fp16 it is
    128, which changes results by about as much as the precision does, and lets mixed sizes batch together.

    `compile` (torch.compile) and `cuda_graphs` (CUDA only) speed up the dense part of the network for the
    batch shapes `warm_up` has run; other shapes run eagerly, and either one that fails falls back to eager
    with a logged warning (model.dense). Compiled fp32 is close to, not bit-exact to, eager fp32.
    """

    def __init__(
        self,
        model: NetworkSteps,
        class_names: list[str],
        weights_path: Path,
        device: str | torch.device = "cpu",
        precision: Precision | str = Precision.FP32,
        bucket_size: int | None = None,
        calibration_images: Sequence[np.ndarray] | None = None,
        category_ids: list[int] | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.precision = Precision(precision)
        self.backend = model.backend
        check_supported(self.precision, self.device)
        check_backend(self.backend, self.precision, self.device)
        if self.device.type == "cuda":
            configure_cuda(self.precision)
        self.config = model.config
        self.model = model
        if isinstance(model, CenterMask):  # other backends come built for inference (model.onnx_backend)
            self.model = model.eval().to(self.device)
            calibration = None
            if self.precision is Precision.INT8:
                images = (
                    calibration_images if calibration_images is not None else default_calibration_images()
                )
                calibration = [
                    model.normalize_and_pad([self._resized(image).pixels.float()]) for image in images
                ]
            model.optimize_for_inference(self.precision.dtype, calibration=calibration)
        # After the rewrite for inference: what is compiled and captured is the network as it will run.
        self.dense = DenseRunner(self.model, device=self.device, compile=compile, cuda_graphs=cuda_graphs)
        fast = self.device.type == "cuda" and self.precision is not Precision.FP32
        self.bucket_size = bucket_size or (FAST_BUCKET_SIZE if fast else self.config.size_divisibility)
        if self.bucket_size % self.config.size_divisibility:
            raise ValueError(f"bucket_size must be a multiple of {self.config.size_divisibility}")
        self.class_names = class_names
        # The dataset's id of each class, which the JSON reports as category_id beside class_id.
        self.category_ids = (
            category_ids if category_ids is not None else default_category_ids(len(class_names))
        )
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path)

    @property
    def config_name(self) -> str:
        return self.config.name

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def compiled(self) -> bool:
        """Whether the dense part runs compiled for warmed-up shapes (asked for, and compiling has not failed)."""
        return self.dense.compiled

    @property
    def cuda_graphs(self) -> bool:
        """Whether warmed-up shapes replay CUDA graphs (asked for, and no capture has failed)."""
        return self.dense.cuda_graphs

    @property
    def resize(self) -> tuple[int, int]:
        """(min_size, max_size) of the shortest-edge resize `prepare` applies: `load_image`'s `draft_to`."""
        return self.config.min_size_test, self.config.max_size_test

    def prepare(self, image: np.ndarray | DecodedImage) -> PreparedImage:
        """(H, W, 3) uint8 RGB, or a DecodedImage (results in its full `size`) → PreparedImage. CPU only and
        thread-safe, so it can run beside inference."""
        if isinstance(image, DecodedImage):
            return prepare_image(image.pixels, *self.resize, self.bucket_size, original_size=image.size)
        return prepare_image(image, *self.resize, self.bucket_size)

    def _resized(self, image: np.ndarray) -> PreparedImage:
        return prepare_image(image, *self.resize)

    def common_shapes(self) -> list[tuple[int, int]]:
        """Padded shapes of ordinary photos (short side at the test size): what warm-up prepares for.

        With the official padding that is one landscape 3:4 shape (compiled kernels do not depend on the shape
        on the CPU); with buckets, every landscape and portrait bucket up to the long-side limit.
        """
        short, longest = self.config.min_size_test, self.config.max_size_test
        if self.bucket_size == self.config.size_divisibility:
            return [padded_shape(short, min(longest, round(short * 4 / 3)), self.bucket_size)]
        sides = sorted({padded_shape(short, side, self.bucket_size)[1] for side in range(short, longest + 1)})
        short_side = padded_shape(short, short, self.bucket_size)[0]
        return sorted({(short_side, side) for side in sides} | {(side, short_side) for side in sides})

    @torch.inference_mode()
    def warm_up(self, shape: tuple[int, int], batch_size: int) -> None:
        """Run the whole network once on a batch of that padded shape, mask heads included; with `compile` or
        `cuda_graphs`, compile and capture the dense part for it first (the only place that happens).

        First calls of a shape and batch size are slow (allocator growth, cuDNN autotuning); the mask head is
        given the most boxes the detector can keep, whatever the weights find in a blank image.
        """
        height, width = shape
        images = [torch.zeros((3, height, width), device=self.device)] * batch_size
        batch = self.model.normalize_and_pad(images, shape)
        self.dense.prepare(batch)
        pyramid, _ = self._detect(batch)
        count = self.config.post_nms_topk
        corners = torch.linspace(0, 0.5, count, device=self.device)[:, None]
        boxes = torch.cat(
            (corners * width, corners * height, (corners + 0.5) * width, (corners + 0.5) * height), 1
        )
        synthetic = Proposals(
            boxes,
            torch.ones(count, device=self.device),
            torch.zeros(count, dtype=torch.int64, device=self.device),
        )
        self.model.segment(pyramid, [synthetic] * batch_size, [shape] * batch_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def infer(
        self, images: Sequence[PreparedImage], selections: Sequence[Selection] | None = None
    ) -> list[Detections]:
        """One forward pass over images of the same padded shape (their batch-mates never change a result).

        `selections` (one per image; default: everything) say which detections each caller wants: the others
        are dropped before the mask head.
        """
        shapes = {image.padded_shape for image in images}
        if len(shapes) > 1:
            raise ValueError(f"one forward pass takes images of one padded shape, got {sorted(shapes)}")
        selections = selections if selections is not None else [Selection()] * len(images)
        pixels = [image.pixels.to(self.device, non_blocking=True).float() for image in images]
        batch = self.model.normalize_and_pad(pixels, images[0].padded_shape)
        pyramid, proposals = self._detect(batch)
        kept_proposals, kept_boxes = [], []
        for image, image_proposals, selection in zip(images, proposals, selections, strict=True):
            boxes, nonempty = scale_boxes(image_proposals.boxes, image.resized_size, image.original_size)
            # The official postprocess drops empty boxes; the selection then applies to what is left.
            nonempty_index = torch.nonzero(nonempty).flatten()
            index = nonempty_index[
                selection.indices(
                    image_proposals.scores[nonempty_index], image_proposals.classes[nonempty_index]
                )
            ]
            kept_proposals.append(image_proposals.take(index))
            kept_boxes.append(boxes[index])
        masks = self.model.segment(pyramid, kept_proposals, [image.resized_size for image in images])
        return [
            Detections(
                image_size=image.original_size,
                boxes=boxes.cpu().numpy(),
                scores=image_proposals.scores.cpu().numpy(),
                class_ids=image_proposals.classes.cpu().numpy(),
                mask_scores=mask_scores.cpu().numpy(),
                mask_probs=mask_probs,
            )
            for image, image_proposals, boxes, (mask_probs, mask_scores) in zip(
                images, kept_proposals, kept_boxes, masks, strict=True
            )
        ]

    def _detect(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[Proposals]]:
        """`NetworkSteps.detect`, its dense part run as this predictor runs it."""
        pyramid, head = self.dense(batch)
        return pyramid, self.model.decode(head)

    def predict(
        self, images: Sequence[np.ndarray | DecodedImage], selection: Selection | None = None
    ) -> list[Detections]:
        """Detections of each image (as `prepare` takes them), each computed as if alone; `selection` as in
        `infer`."""
        selection = selection or Selection()
        return [self.infer([self.prepare(image)], [selection])[0] for image in images]


def default_calibration_images() -> list[np.ndarray]:
    """Images for int8 calibration when the caller gives none: generated shapes scenes (edges, flat and
    textured colours). Calibrating on images like the ones to be served gives better int8 accuracy."""
    from model.data.shapes import TRAINING, image_rng, render_image

    return [render_image(image_rng(0, index), TRAINING)[0] for index in range(CALIBRATION_IMAGES)]


def configure_cuda(precision: Precision) -> None:
    """Process-wide CUDA settings for inference: cuDNN autotuning per shape, and in fp32 no TF32.

    TF32 (on by default for cuDNN convolutions on Ampere and later) rounds inputs to 10 mantissa bits, which
    would take fp32 results outside the official outputs' tolerances (CENTERMASK_SPEC.md §9.17).
    """
    torch.backends.cudnn.benchmark = True
    exact = precision is Precision.FP32
    torch.backends.cudnn.allow_tf32 = not exact
    torch.backends.cuda.matmul.allow_tf32 = not exact


def resolve_device(device: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


def load_predictor(
    weights: str | Path | None = None,
    config: str | None = None,
    device: str | torch.device = "cpu",
    precision: Precision | str = Precision.FP32,
    calibration_images: Sequence[np.ndarray] | None = None,
    backend: Backend | str = Backend.TORCH,
    onnx: str | Path | None = None,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Predictor:
    """Load weights (default: the bundled model) into a Predictor on `device` ("cpu", "cuda", "auto").

    `precision` is "fp32" (exact to the official outputs), "bf16", "fp16" (CUDA) or "int8" (CPU; calibrated
    on `calibration_images`, by default generated shapes scenes); one the device cannot run fails here,
    before the (slow) load. `backend` "onnxruntime" runs the network exported to ONNX (fp32, CPU): exported
    while loading, or read from `onnx` (the `--out` of `python -m model.export` for these weights).
    `compile` and `cuda_graphs` as in `Predictor`; CUDA graphs without a CUDA device fail here too.
    """
    backend = Backend(backend)
    target = resolve_device(backend_device(backend, str(device)))
    check_supported(Precision(precision), target)
    check_backend(backend, Precision(precision), target)
    if cuda_graphs:
        check_cuda_graphs(target)
    if onnx is not None and backend is not Backend.ONNXRUNTIME:
        raise ValueError("exported ONNX graphs are run by the onnxruntime backend: pass backend onnxruntime")
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.is_file():
        raise FileNotFoundError(f"the bundled default weights are missing ({path}); pass a weights file")
    model, class_names, checkpoint = load_model(path, config)
    category_ids = resolve_category_ids(checkpoint, len(class_names), str(path))
    network: NetworkSteps = model
    if backend is Backend.ONNXRUNTIME:
        from model.export import provenance
        from model.onnx_backend import OnnxCenterMask

        network = OnnxCenterMask.from_model(model, provenance(model, class_names, path), onnx)
    return Predictor(
        network,
        class_names,
        path,
        target,
        precision,
        calibration_images=calibration_images,
        category_ids=category_ids,
        compile=compile,
        cuda_graphs=cuda_graphs,
    )


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and build a predictor and decode its images, shared by the model's command
    lines."""
    parser.add_argument("--weights", type=Path, help="checkpoint (.pth/.pkl); default: the bundled model")
    parser.add_argument("--config", help="config name, needed for official checkpoints")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        choices=[p.value for p in Precision],
        default=Precision.FP32.value,
        help="fp32 (exact to the official outputs), bf16 (CPUs with AVX-512 BF16 or AMX, CUDA), fp16 (CUDA)",
    )
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=Backend.TORCH.value,
        help="torch, or onnxruntime: the network exported to ONNX, run by ONNX Runtime (CPU, fp32; the [onnx] "
        "extra)",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        help="with --backend onnxruntime: the graphs `python -m model.export --out` wrote for these weights "
        "(default: export them while loading)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the backbone, FPN and FCOS head compiled by torch.compile for ordinary photos' padded shapes "
        "(compiled before the first image: tens of seconds; other shapes run eagerly; a failure falls back to "
        "eager with a warning)",
    )
    parser.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode JPEGs that the resize shrinks by 2x or more at 1/2, 1/4 or 1/8 scale: faster, with "
        "slightly different pixels (results stay in the full image's pixels)",
    )


def draft_from_arguments(args: argparse.Namespace, predictor: Predictor) -> tuple[int, int] | None:
    """`load_image`'s `draft_to` for these options."""
    return predictor.resize if args.jpeg_draft else None


def predictor_from_arguments(args: argparse.Namespace) -> Predictor:
    predictor = load_predictor(
        args.weights,
        args.config,
        args.device,
        args.precision,
        backend=args.backend,
        onnx=args.onnx,
        compile=args.compile,
    )
    if args.compile:  # compiling happens at warm-up only: for the shapes of ordinary photos, one at a time
        for shape in predictor.common_shapes():
            predictor.warm_up(shape, batch_size=1)
    return predictor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.predict", description=__doc__)
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="image files (unreadable ones are skipped and reported; exit status 1)",
    )
    add_predictor_arguments(parser)
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections scoring at least this (default: everything the config's 0.05 candidate "
        "threshold produces, i.e. the full official output)",
    )
    parser.add_argument(
        "--class-agnostic-nms",
        type=float,
        nargs="?",
        const=CLASS_AGNOSTIC_IOU,
        metavar="IOU",
        help="after the model, keep only the best-scoring of detections whose boxes overlap with IoU above "
        f"IOU (default {CLASS_AGNOSTIC_IOU}) whatever their classes: one label per object",
    )
    parser.add_argument("--mask-format", choices=("rle", "polygon", "none"), default="rle")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    predictor = predictor_from_arguments(args)
    draft_to = draft_from_arguments(args, predictor)
    records, unreadable = [], 0
    for path in args.images:
        try:
            image = load_image(path, draft_to=draft_to)
        except (ImageError, OSError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"{path}: skipped: {reason}", file=sys.stderr)
            unreadable += 1
            continue
        # Suppressors outrank what they suppress, so the threshold can go first, into the model.
        (detections,) = predictor.predict([image], Selection(score_threshold=args.score_threshold))
        if args.class_agnostic_nms is not None:
            detections = detections.class_agnostic_nms(args.class_agnostic_nms)
        records.append(
            image_record(
                path.name, detections, predictor.class_names, predictor.category_ids, args.mask_format
            )
        )
    args.output.write_text(json.dumps(records))
    total = sum(len(r["instances"]) for r in records)
    print(f"{len(records)} images, {total} instances → {args.output}", file=sys.stderr)
    # Like cp or grep: the readable files are done, and the status says that some were not.
    return 1 if unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
