"""The predictor: a loaded CenterMask with its pre- and postprocessing, the one orchestration of the pipeline.

    prepare (CPU, per image) → infer (per batch): one uint8 canvas → the dense program (normalise,
    engine.features) → FCOS decoding and NMS → the caller's selection → RoI pooling → engine.predict_masks →
    Detections

Two ways through the steps after the dense program, with the same results: per image (the official code's
order, exact to it on the CPU), and for a whole batch at once with a handful of host synchronisations and one
device-to-host copy (`batched`, the default on CUDA, where every synchronisation stalls the host and the
GPU's queue). Loading a predictor (`load_predictor`) is `model.inference.load`; the JSON it is turned into,
`model.wire.records`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.inference.backends import Backend, check_backend
from model.inference.dense import DenseRunner
from model.inference.detections import Detections, Selection
from model.inference.device import cuda_numerics
from model.inference.engine import Engine, TorchEngine
from model.inference.images import DecodedImage
from model.inference.postprocess import (
    MASK_LEVELS,
    FcosDecoder,
    Rows,
    pool_boxes,
    rank_in_image,
    scale_boxes,
)
from model.inference.precision import Precision, check_supported
from model.inference.preprocess import (
    DenseInput,
    PreparedImage,
    normalize_and_pad,
    padded_shape,
    prepare_image,
)
from model.inference.quantize import default_calibration_images
from model.inference.tiling import Tiling, segment_tiled
from model.network.centermask import CenterMask
from model.network.fcos import FCOSHeadOutputs
from model.weights.checkpoint import file_sha256
from model.weights.coco_classes import default_category_ids

# Padded-shape buckets of the fast GPU path: with 128 px steps a lite model (600/1000) sees 8 shapes of
# ordinary photos instead of 26, so mixed traffic still fills batches. Exact mode pads as the official code.
FAST_BUCKET_SIZE = 128
# RoIs per group of the mask and MaskIoU heads' batches on the CPU (see Predictor.roi_bucket).
ROI_GROUP = 8


def power_of_two_at_least(count: int) -> int:
    return 1 << max(0, count - 1).bit_length()


class Predictor:
    """A loaded CenterMask model with its preprocessing and postprocessing. Build once, reuse.

    Given a freshly loaded `CenterMask`, the predictor moves it to `device` and rewrites it for inference in
    the precision's dtype (`TorchEngine`: batch norms folded, channels-last; int8 calibrated on
    `calibration_images`, by default the shipped scenes), and owns it from then on. Given another engine (the
    onnxruntime one, `model.onnx.engine.OnnxEngine`), it runs that as it comes.

    `bucket_size` is the multiple that padded image sizes are rounded up to. Images of the same padded shape
    can share a forward pass; an image's padded shape depends on its own size alone, so a result never depends
    on its batch-mates. The default, 32, is the official padding (results exact); on CUDA in bf16/fp16 it is
    128, which changes results by about as much as the precision does, and lets mixed sizes batch together.

    `compile` (torch.compile) and `cuda_graphs` (CUDA only) speed up the dense part of the network for the
    batch shapes `warm_up` has run; other shapes run eagerly, and either one that fails falls back to eager
    with a logged warning (model.inference.dense). Compiled fp32 is close to, not bit-exact to, eager fp32.
    `jpeg_draft`: images are decoded for this predictor at reduced size where its resize allows (`draft_to`).

    On CUDA, batches and the mask heads' RoIs run in power-of-two sizes (`batch_sizes`, `roi_bucket`), so that
    cuDNN autotunes, and CUDA graphs are captured, for a few shapes during warm-up rather than under traffic;
    the postprocessing is `batched`; and TF32 is on only while this predictor runs in bf16 or fp16 (in fp32
    convolutions and matmuls stay IEEE, exact to the official outputs).
    """

    def __init__(
        self,
        network: CenterMask | Engine,
        class_names: list[str],
        weights_path: Path,
        device: str | torch.device = "cpu",
        precision: Precision | str = Precision.FP32,
        bucket_size: int | None = None,
        calibration_images: Sequence[np.ndarray] | None = None,
        category_ids: list[int] | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        jpeg_draft: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.precision = Precision(precision)
        self.config = network.config
        self.backend = Backend.TORCH if isinstance(network, CenterMask) else network.backend
        check_supported(self.precision, self.device)
        check_backend(self.backend, self.precision, self.device)
        on_cuda = self.device.type == "cuda"
        # The whole batch's postprocessing at once (see the module's docstring); tests also run it on the CPU.
        self.batched = on_cuda
        # Normalisation runs where the batch is padded, on the inference device, in float32.
        self.pixel_mean = torch.tensor(self.config.pixel_mean).view(3, 1, 1).to(self.device)
        self.pixel_std = torch.tensor(self.config.pixel_std).view(3, 1, 1).to(self.device)
        self.engine: Engine
        if isinstance(network, CenterMask):
            calibration = None
            if self.precision is Precision.INT8:
                images = (
                    calibration_images if calibration_images is not None else default_calibration_images()
                )
                calibration = [
                    self.normalize_and_pad([self._resized(image).pixels.float()]) for image in images
                ]
            self.engine = TorchEngine(
                network.to(self.device), dtype=self.precision.dtype, calibration=calibration
            )
        else:
            self.engine = network
        self.decoder = FcosDecoder.from_config(self.config)
        # After the rewrite for inference: what is compiled and captured is the network as it will run.
        self.dense = DenseRunner(self.engine, device=self.device, compile=compile, cuda_graphs=cuda_graphs)
        fast = on_cuda and self.precision is not Precision.FP32
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
        self.jpeg_draft = jpeg_draft
        self._warm_roi_buckets: set[int] = set()

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

    @property
    def draft_to(self) -> tuple[int, int] | None:
        """`load_image`'s `draft_to` for this predictor's images: its resize with `jpeg_draft`, else None."""
        return self.resize if self.jpeg_draft else None

    def normalize_and_pad(
        self, images: list[torch.Tensor], shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Per image (3, h, w) float BGR 0-255 on the device → the engine's (N, 3, Hp, Wp) input batch (as the
        dense program makes it from a `DenseInput`)."""
        return normalize_and_pad(
            images, self.pixel_mean, self.pixel_std, self.config.size_divisibility, shape
        )

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

    def batch_sizes(self, max_batch_size: int) -> list[int]:
        """The batch sizes a batcher of `max_batch_size` makes this predictor run, for warm-up: every size on
        the CPU; on CUDA powers of two (and the maximum), to which `infer` pads smaller batches."""
        if self.device.type != "cuda":
            return list(range(1, max_batch_size + 1))
        return sorted(
            {min(power_of_two_at_least(size), max_batch_size) for size in range(1, max_batch_size + 1)}
        )

    def roi_bucket(self, count: int) -> int:
        """How many RoIs the mask heads run for `count` (zero rows added): a multiple of ROI_GROUP on the CPU,
        a power of two (at least ROI_GROUP) on CUDA. Kernels pick their blocking by the batch size, so a fixed
        size makes each RoI's result independent of its companions, which lets a request's selection drop
        detections before the heads; on CUDA it also bounds the shapes cuDNN autotunes for."""
        if self.device.type == "cuda":
            return max(ROI_GROUP, power_of_two_at_least(count))
        return count + (-count % ROI_GROUP)

    @torch.inference_mode()
    def warm_up(self, shape: tuple[int, int], batch_size: int) -> None:
        """Run the whole network once on a batch of that padded shape, mask heads included; with `compile` or
        `cuda_graphs`, compile and capture the dense part for it first (the only place that happens).

        First calls of a shape and batch size are slow (allocator growth, cuDNN autotuning); the mask heads run
        on every RoI bucket up to the most boxes such a batch can keep, whatever the weights find in a blank
        image (their shapes do not depend on the image's).
        """
        if self.device.type == "cuda":  # as `infer` pads it
            batch_size = power_of_two_at_least(batch_size)
        with self._numerics():
            canvas = torch.zeros((3, *shape), dtype=torch.uint8)
            batch = DenseInput.of([canvas] * batch_size, shape, self.device)
            self.dense.prepare(batch)
            pyramid, _ = self.dense(batch)
            height, width = shape
            most = self.roi_bucket(batch_size * self.config.post_nms_topk)
            # On CUDA every RoI bucket up to that, once per process (the heads' shapes do not depend on the
            # image's); on the CPU, with nothing to autotune, the largest.
            buckets = (
                {self.roi_bucket(size) for size in range(1, most + 1)}
                if self.device.type == "cuda"
                else {most}
            )
            for count in sorted(buckets - self._warm_roi_buckets):
                self._warm_roi_buckets.add(count)
                corners = torch.linspace(0, 0.5, count, device=self.device)[:, None]
                boxes = torch.cat(
                    (corners * width, corners * height, (corners + 0.5) * width, (corners + 0.5) * height), 1
                )
                image = torch.arange(count, device=self.device) % batch_size
                synthetic = Rows(
                    boxes,
                    torch.ones(count, device=self.device),
                    torch.zeros(count, dtype=torch.int64, device=self.device),
                    image,
                )
                self._mask_heads(pyramid, synthetic, [shape] * batch_size)
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
        pixels = [image.pixels for image in images]
        if self.device.type == "cuda":  # a warmed-up batch size: blank images fill the rest
            blank = torch.zeros((3, 1, 1), dtype=torch.uint8)
            pixels += [blank] * (
                min(s for s in self.batch_sizes(len(images) + 64) if s >= len(images)) - len(images)
            )
        with self._numerics():
            pyramid, head = self.dense(DenseInput.of(pixels, images[0].padded_shape, self.device))
            if len(pixels) > len(images):
                head = type(head)(*([t[: len(images)] for t in level] for level in head))
            if self.batched:
                return self._postprocess_batch(images, selections, pyramid, head)
            return self._postprocess_each(images, selections, pyramid, head)

    def _postprocess_each(
        self,
        images: Sequence[PreparedImage],
        selections: Sequence[Selection],
        pyramid: dict[str, torch.Tensor],
        head: FCOSHeadOutputs,
    ) -> list[Detections]:
        """Decoding, selection and the mask heads image by image, in the official code's order."""
        kept_proposals, kept_boxes = [], []
        for image, image_proposals, selection in zip(images, self.decoder(head), selections, strict=True):
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
        rows = Rows(
            torch.cat([p.boxes for p in kept_proposals]),
            torch.cat([p.scores for p in kept_proposals]),
            torch.cat([p.classes for p in kept_proposals]),
            torch.cat([torch.full_like(p.classes, index) for index, p in enumerate(kept_proposals)]),
        )
        mask_probs, mask_scores = self._mask_heads(pyramid, rows, [image.resized_size for image in images])
        counts = [p.scores.numel() for p in kept_proposals]
        return [
            Detections(
                image_size=image.original_size,
                boxes=boxes.cpu().numpy(),
                scores=proposals.scores.cpu().numpy(),
                class_ids=proposals.classes.cpu().numpy(),
                mask_scores=scores.cpu().numpy(),
                mask_probs=probs,
            )
            for image, proposals, boxes, probs, scores in zip(
                images,
                kept_proposals,
                kept_boxes,
                mask_probs.split(counts),
                mask_scores.split(counts),
                strict=True,
            )
        ]

    def _postprocess_batch(
        self,
        images: Sequence[PreparedImage],
        selections: Sequence[Selection],
        pyramid: dict[str, torch.Tensor],
        head: FCOSHeadOutputs,
    ) -> list[Detections]:
        """`_postprocess_each` for the whole batch as one table of rows: host synchronisations only to gather
        NMS candidates, in NMS, to gather the selected rows, and in the one copy of the results to the host
        (on CUDA, every synchronisation leaves the GPU idle until the host queues more work)."""
        count, device = len(images), self.device
        head = FCOSHeadOutputs(*([t.float() for t in level] for level in head))
        rows, top = self.decoder.detect_batched(head, self.decoder.locations(head.cls_logits))
        # Per image, as small host-made tensors: scale to the original image, its size, what it wants.
        resized = torch.tensor([image.resized_size for image in images], dtype=torch.float64)
        original = torch.tensor([image.original_size for image in images], dtype=torch.float64)
        scale = (original / resized).float().to(device)  # (N, 2): y, x, rounded as scale_boxes rounds them
        limits = original.float().to(device)
        thresholds = torch.tensor(
            [s.score_threshold if s.score_threshold is not None else float("-inf") for s in selections],
            device=device,
        )
        most = torch.tensor(
            [s.max_detections if s.max_detections is not None else len(rows.scores) + 1 for s in selections],
            device=device,
        )
        wanted_classes = torch.ones((count, self.config.num_classes), dtype=torch.bool)
        for index, selection in enumerate(selections):
            if selection.class_ids is not None:
                wanted_classes[index] = False
                known = [
                    class_id for class_id in selection.class_ids if 0 <= class_id < self.config.num_classes
                ]
                wanted_classes[index, known] = True
        wanted_classes = wanted_classes.to(device)
        # scale_boxes for every row at once.
        boxes = rows.boxes.float().clone()
        boxes[:, 0::2] *= scale[rows.image, 1, None]
        boxes[:, 1::2] *= scale[rows.image, 0, None]
        boxes[:, 0::2] = torch.minimum(boxes[:, 0::2].clamp(min=0), limits[rows.image, 1, None])
        boxes[:, 1::2] = torch.minimum(boxes[:, 1::2].clamp(min=0), limits[rows.image, 0, None])
        nonempty = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        # The official order: NMS top-k, empty boxes dropped, then each caller's selection.
        wanted = (
            top
            & nonempty
            & (rows.scores >= thresholds[rows.image])
            & wanted_classes[rows.image, rows.classes]
        )
        wanted &= rank_in_image(rows.image, wanted, count) < most[rows.image]
        selected = wanted.nonzero()[:, 0]
        kept, kept_boxes = rows.take(selected), boxes[selected]
        mask_probs, mask_scores = self._mask_heads(pyramid, kept, [image.resized_size for image in images])
        # Everything the host needs, in one copy.
        resolution = mask_probs.shape[-1]
        table = torch.cat(
            (
                kept_boxes,
                kept.scores[:, None],
                kept.classes[:, None].float(),
                kept.image[:, None].float(),
                mask_scores[:, None],
                mask_probs.flatten(1),
            ),
            dim=1,
        ).cpu()
        per_image = torch.bincount(table[:, 6].long(), minlength=count).tolist()
        return [
            Detections(
                image_size=image.original_size,
                boxes=part[:, :4].numpy(),
                scores=part[:, 4].numpy(),
                class_ids=part[:, 5].long().numpy(),
                mask_scores=part[:, 7].numpy(),
                mask_probs=part[:, 8:].reshape(-1, resolution, resolution),
            )
            for image, part in zip(images, table.split(per_image), strict=True)
        ]

    def _mask_heads(
        self, pyramid: dict[str, torch.Tensor], rows: Rows, image_sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask heads on given boxes (resized-image pixels): float32 mask probabilities (M, 28, 28) of each
        row's class and mask scores (M,). image_sizes are the resized, unpadded (h, w) of each image."""
        resolution = 2 * self.config.mask_resolution
        count = rows.scores.numel()
        if count == 0:
            empty = torch.zeros((0, resolution, resolution), device=pyramid["p3"].device)
            return empty, rows.scores.float()
        areas = torch.tensor([float(h * w) for h, w in image_sizes], dtype=torch.float32, device=self.device)
        # RoIAlign in float32 (torchvision has no bfloat16 kernel on the CPU, and it keeps box sampling exact).
        roi_features = pool_boxes(
            [pyramid[level].float() for level in MASK_LEVELS],
            rows.boxes,
            rows.image,
            areas,
            self.config.mask_resolution,
            every_level=self.batched,
        )
        padding = self.roi_bucket(count) - count
        roi_features = F.pad(roi_features, (0, 0, 0, 0, 0, 0, 0, padding))
        roi_features = roi_features.to(
            dtype=self.engine.compute_dtype, memory_format=self.engine.memory_format
        )
        mask_probs, mask_scores = self.engine.predict_masks(
            roi_features, F.pad(rows.classes, (0, padding)), F.pad(rows.scores, (0, padding))
        )
        return mask_probs[:count].float(), mask_scores[:count].float()

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        """This predictor's CUDA settings while it runs (TF32 off in fp32); nothing elsewhere."""
        if self.device.type != "cuda":
            yield
            return
        with cuda_numerics(self.precision):
            yield

    def predict(
        self,
        images: Sequence[np.ndarray | DecodedImage],
        selection: Selection | None = None,
        tiling: Tiling | None = None,
    ) -> list[Detections]:
        """Detections of each image (as `prepare` takes them), each computed as if alone; `selection` as in
        `infer`.

        `tiling` (`model.inference.tiling.Tiling`; None: never) segments an image its plan tiles tile by tile
        at full resolution, plus one pass of the whole image, and merges them: masks stitched across tiles.
        Images it does not tile are segmented as without it. A tiled image must be at full resolution (not a
        JPEG decoded reduced).
        """
        selection = selection or Selection()
        results = []
        for image in images:
            plan = tiling.plan(_full_size(image), self.resize) if tiling is not None else None
            if plan is None:
                results.append(self.infer([self.prepare(image)], [selection])[0])
                continue
            pixels = image.pixels if isinstance(image, DecodedImage) else image
            if pixels.shape[:2] != plan.image_size:
                raise ValueError(
                    "a tiled image must be decoded at full resolution: load it without draft_to "
                    f"(got {pixels.shape[1]}×{pixels.shape[0]} pixels of a "
                    f"{plan.image_size[1]}×{plan.image_size[0]} image)"
                )
            results.append(segment_tiled(pixels, plan, self._infer_pixels, selection, self.tile_batch_size))
        return results

    @property
    def tile_batch_size(self) -> int:
        """Tiles per forward pass in `predict`: one on the CPU, where a batch only adds latency (a pass
        already keeps every core busy), eight on CUDA."""
        return 8 if self.device.type == "cuda" else 1

    def _infer_pixels(self, images: list[np.ndarray], selection: Selection) -> list[Detections]:
        return self.infer([self.prepare(image) for image in images], [selection] * len(images))


def _full_size(image: np.ndarray | DecodedImage) -> tuple[int, int]:
    return image.size if isinstance(image, DecodedImage) else (int(image.shape[0]), int(image.shape[1]))
