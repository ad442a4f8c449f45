"""The predictor: a loaded CenterMask with its pre- and postprocessing, the one orchestration of the pipeline.

    prepare (CPU, per image) → infer (per batch): normalise and pad → engine.features (dense network) →
    FCOS decoding and NMS → the caller's selection → RoI pooling → engine.predict_masks → Detections

Loading one (`load_predictor`) is `model.inference.load`; the JSON it is turned into, `model.wire.records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.inference.backends import Backend, check_backend
from model.inference.dense import DenseRunner
from model.inference.detections import Detections, Selection
from model.inference.device import configure_cuda
from model.inference.engine import Engine, TorchEngine
from model.inference.images import DecodedImage
from model.inference.postprocess import MASK_LEVELS, FcosDecoder, Proposals, pool_rois, scale_boxes
from model.inference.precision import Precision, check_supported
from model.inference.preprocess import PreparedImage, normalize_and_pad, padded_shape, prepare_image
from model.inference.quantize import default_calibration_images
from model.network.centermask import CenterMask
from model.weights.checkpoint import file_sha256
from model.weights.coco_classes import default_category_ids

# Padded-shape buckets of the fast GPU path: with 128 px steps a lite model (600/1000) sees 8 shapes of
# ordinary photos instead of 26, so mixed traffic still fills batches. Exact mode pads as the official code.
FAST_BUCKET_SIZE = 128
# RoIs per group of the mask and MaskIoU heads' batches (see Predictor._segment).
ROI_GROUP = 8


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
        if self.device.type == "cuda":
            configure_cuda(self.precision)
        # Normalisation runs where the batch is padded, on the inference device, in float32.
        self._pixel_mean = torch.tensor(self.config.pixel_mean).view(3, 1, 1).to(self.device)
        self._pixel_std = torch.tensor(self.config.pixel_std).view(3, 1, 1).to(self.device)
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
        self.jpeg_draft = jpeg_draft

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
        """Per image (3, h, w) float BGR 0-255 on the device → the engine's (N, 3, Hp, Wp) input batch."""
        return normalize_and_pad(
            images, self._pixel_mean, self._pixel_std, self.config.size_divisibility, shape
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

    @torch.inference_mode()
    def warm_up(self, shape: tuple[int, int], batch_size: int) -> None:
        """Run the whole network once on a batch of that padded shape, mask heads included; with `compile` or
        `cuda_graphs`, compile and capture the dense part for it first (the only place that happens).

        First calls of a shape and batch size are slow (allocator growth, cuDNN autotuning); the mask head is
        given the most boxes the detector can keep, whatever the weights find in a blank image.
        """
        height, width = shape
        images = [torch.zeros((3, height, width), device=self.device)] * batch_size
        batch = self.normalize_and_pad(images, shape)
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
        self._segment(pyramid, [synthetic] * batch_size, [shape] * batch_size)
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
        batch = self.normalize_and_pad(pixels, images[0].padded_shape)
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
        masks = self._segment(pyramid, kept_proposals, [image.resized_size for image in images])
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
        """A padded, normalised batch → the pyramid and each image's FCOS detections (float32, whatever the
        network runs in)."""
        pyramid, head = self.dense(batch)
        return pyramid, self.decoder(head)

    def _segment(
        self, pyramid: dict[str, torch.Tensor], proposals: list[Proposals], image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The mask heads on given boxes: per image, float32 mask probabilities (M, 28, 28) of each detection's
        class and mask scores (M,). image_sizes are the resized, unpadded (h, w)."""
        resolution = 2 * self.config.mask_resolution
        counts = [p.scores.numel() for p in proposals]
        if sum(counts) == 0:
            empty = torch.zeros((0, resolution, resolution), device=pyramid["p3"].device)
            return [(empty, p.scores) for p in proposals]
        # RoIAlign in float32 (torchvision has no bfloat16 kernel on the CPU, and it keeps box sampling exact).
        roi_features = pool_rois(
            [pyramid[level].float() for level in MASK_LEVELS],
            [p.boxes for p in proposals],
            image_sizes,
            self.config.mask_resolution,
        )
        classes = torch.cat([p.classes for p in proposals])
        scores = torch.cat([p.scores for p in proposals])
        # The heads run on a multiple of ROI_GROUP RoIs (zero rows added): kernels pick their blocking by
        # the batch size, so a fixed multiple makes each RoI's result independent of how many others
        # there are. That is what lets a request's selection drop detections before the heads.
        count = classes.numel()
        padding = -count % ROI_GROUP
        roi_features = F.pad(roi_features, (0, 0, 0, 0, 0, 0, 0, padding))
        roi_features = roi_features.to(
            dtype=self.engine.compute_dtype, memory_format=self.engine.memory_format
        )
        mask_probs, mask_scores = self.engine.predict_masks(
            roi_features, F.pad(classes, (0, padding)), F.pad(scores, (0, padding))
        )
        return list(
            zip(
                mask_probs[:count].float().split(counts),
                mask_scores[:count].float().split(counts),
                strict=True,
            )
        )

    def predict(
        self, images: Sequence[np.ndarray | DecodedImage], selection: Selection | None = None
    ) -> list[Detections]:
        """Detections of each image (as `prepare` takes them), each computed as if alone; `selection` as in
        `infer`."""
        selection = selection or Selection()
        return [self.infer([self.prepare(image)], [selection])[0] for image in images]
