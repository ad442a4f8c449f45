"""Train CenterMask on COCO-format data: `python -m training.train --config NAME --train-json GT.json ...`.

The backbone trains with ordinary BatchNorm, whose eval-mode computation is exactly the frozen batch norm of
the inference model, so exported checkpoints keep the official key layout. Training state is saved to
`OUT/last.pth` (resumable) and the inference weights to `OUT/model.pth` (our checkpoint format).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import operator
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.weights.checkpoint import CheckpointError, load_torch_file, read_checkpoint, save_checkpoint
from training.data.augment import PRESETS as AUGMENTATIONS
from training.data.augment import PROBABILITIES as AUGMENTATION_PROBABILITIES
from training.data.augment import Augmentation
from training.data.coco import CocoInstances, collate
from training.step import training_losses

# Layers whose shape depends on the class count: re-initialised when fine-tuning to other classes.
CLASS_SPECIFIC = (
    "proposal_generator.fcos_head.cls_logits.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.maskiou_head.maskiou.",
)
# The warm-up of a long run; a short one warms up for a tenth of its iterations (`default_warmup`).
MAX_DEFAULT_WARMUP = 300


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default after its help, except where there is none to show: an unset value (its help
    says what unset means) or a switch (it takes no value; its help says what it turns on or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def default_warmup(iters: int) -> int:
    """Warm-up iterations when --warmup-iters is not given: 300, or a tenth of a shorter run, so that even a
    run of a few dozen iterations reaches the peak learning rate and spends most of its steps after it."""
    return min(MAX_DEFAULT_WARMUP, iters // 10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="architecture, e.g. centermask_lite_V_19_slim_eSE_FPN_ms_4x"
    )
    parser.add_argument(
        "--train-json",
        type=Path,
        required=True,
        help="COCO JSON of the training set (its categories are the classes)",
    )
    parser.add_argument("--train-images", type=Path, required=True, help="directory of the training images")
    parser.add_argument(
        "--keep-empty-images",
        action="store_true",
        help="train on images without annotations too (negatives: only the background loss applies); "
        "by default they are skipped",
    )
    parser.add_argument(
        "--val-json",
        type=Path,
        help="COCO JSON to evaluate on at the end (and every --eval-every iterations) (default: none, no "
        "evaluation)",
    )
    parser.add_argument(
        "--val-images", type=Path, help="directory of the validation images (default: --train-images)"
    )
    parser.add_argument("--val-max-images", type=int, default=100, help="images of --val-json evaluated")
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory: model.pth (to serve), last.pth (to resume)"
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="initial weights (official or ours, the bundled model's too); class layers reset where the "
        "classes differ (default: none, random initialisation)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth (or OUT/model.pth)")
    parser.add_argument("--iters", type=int, default=10000, help="iteration to stop at (a resumed run too)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per iteration")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    parser.add_argument(
        "--weight-decay", type=float, default=1e-4, help="AdamW weight decay (not on norms, biases)"
    )
    parser.add_argument(
        "--warmup-iters",
        type=int,
        help=f"linear warm-up to --lr, then cosine decay to 5%% of it (default: min({MAX_DEFAULT_WARMUP}, "
        "iters // 10))",
    )
    parser.add_argument(
        "--min-sizes",
        type=int,
        nargs="+",
        default=[256, 288, 320, 352, 384, 416],
        help="training short sides, one drawn per image",
    )
    parser.add_argument("--max-size", type=int, default=704, help="cap on the training long side")
    parser.add_argument(
        "--augmentation",
        choices=sorted(AUGMENTATIONS),
        default="basic",
        help="augmentation preset: basic (horizontal flips, as detectron2) or strong (flips, quarter turns, "
        "colour, channel shuffle, blur, noise, JPEG); the probability flags below override its values",
    )
    for name in AUGMENTATION_PROBABILITIES:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            dest=name,
            metavar="P",
            help="probability per sample (default: the --augmentation preset's)",
        )
    parser.add_argument(
        "--class-exclusion-weight",
        type=float,
        default=0.0,
        help="weight of an extra loss pushing other classes' scores to 0 on objects, against one object "
        "detected under two labels (0: the official losses)",
    )
    parser.add_argument(
        "--background-weight",
        type=float,
        default=0.0,
        help="weight of an extra loss pushing background scores above 0.05 to 0 at full strength (the focal "
        "loss barely moves a false positive at 0.3-0.6), against detections on photographs (0: off)",
    )
    parser.add_argument(
        "--test-min-size",
        type=int,
        help="test-time short side stored in the checkpoint (default: the config's)",
    )
    parser.add_argument(
        "--test-max-size",
        type=int,
        help="test-time long-side cap stored in the checkpoint (default: the config's)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:1 ...)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="mixed precision: auto is bf16 on CPU, bf16 or fp16 on CUDA",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW weights (channels-last trains ~1.5x faster on CPU with bf16)",
    )
    parser.add_argument("--workers", type=int, default=1, help="data loading processes")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="save OUT/last.pth and OUT/model.pth every N iterations",
    )
    parser.add_argument(
        "--keep-every",
        type=int,
        default=0,
        help="also keep the exported weights of every Kth iteration as OUT/model-ITER.pth, to choose one "
        "later (0: only OUT/model.pth, the latest)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="evaluate on --val-json every N iterations (0: at the end only)",
    )
    parser.add_argument("--log-every", type=int, default=10, help="a loss line every N iterations")
    parser.add_argument(
        "--seed", type=int, default=0, help="torch seed: initialisation, sampling, augmentation"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, with the warm-up resolved (`default_warmup`), and a warning when the schedule never
    reaches the peak learning rate."""
    args = build_parser().parse_args(argv)
    if args.warmup_iters is None:
        args.warmup_iters = default_warmup(args.iters)
    elif args.warmup_iters >= args.iters:
        # Still allowed (a deliberately gentle run), but it used to happen silently with the old default.
        peak = learning_rate(args.iters - 1, args) if args.iters > 0 else 0.0
        print(
            f"warning: --warmup-iters {args.warmup_iters} ≥ --iters {args.iters}: the learning rate never "
            f"reaches --lr {args.lr:g} (at most {peak:.2g})",
            file=sys.stderr,
        )
    return args


def learning_rate(iteration: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if iteration < args.warmup_iters:
        return args.lr * (0.001 + 0.999 * iteration / args.warmup_iters)
    progress = (iteration - args.warmup_iters) / max(args.iters - args.warmup_iters, 1)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def initialise_from(model: CenterMask, path: Path, class_names: Sequence[str] | None = None) -> list[str]:
    """Load every matching tensor of a checkpoint (official or ours, fp32 or fp16); returns the reset keys.

    The class-specific layers are kept only when they fit and, where the checkpoint names its classes, the
    names are ``class_names`` in the same order; otherwise they keep their fresh initialisation.
    """
    checkpoint = read_checkpoint(path)
    source = checkpoint.state_dict
    target = model.state_dict()
    renamed = class_names is not None and checkpoint.class_names not in (None, list(class_names))
    reset = [
        k
        for k in target
        if k.startswith(CLASS_SPECIFIC) and k in source and (renamed or source[k].shape != target[k].shape)
    ]
    usable = {k: v for k, v in source.items() if k not in reset}
    missing, unexpected = model.load_state_dict(usable, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and k not in reset]
    mismatched = [k for k in usable if k in target and usable[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path} cannot initialise {model.config.name}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"wrong shape {mismatched[:8]}"
        )
    return reset


def endless(loader: DataLoader) -> Iterator[list[dict[str, Any]]]:
    while True:
        yield from loader


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and FCOS scales."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim <= 1 or name.endswith(".scale") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Progress:
    """A log line every few iterations; on a terminal, a live progress line in between."""

    def __init__(self, total: int, every: int) -> None:
        self.total, self.every = total, every
        self.interactive = sys.stderr.isatty()
        self.window: list[float] = []

    def update(self, iteration: int, seconds: float, losses: dict[str, float], lr: float) -> None:
        self.window = [*self.window[-19:], seconds]
        per_iter = sum(self.window) / len(self.window)
        eta = per_iter * (self.total - iteration)
        loss_text = " ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in losses.items())
        line = (
            f"iter {iteration}/{self.total} loss={sum(losses.values()):.4f} {loss_text} lr={lr:.2e} "
            f"{per_iter:.2f}s/it eta={time.strftime('%H:%M:%S', time.gmtime(eta))}"
        )
        if iteration % self.every == 0 or iteration == self.total:
            print(("\r" if self.interactive else "") + line, file=sys.stderr, flush=True)
        elif self.interactive:
            print("\r" + line[:150], end="", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One training run's pieces: what `main` builds from the arguments and the loop uses."""

    args: argparse.Namespace
    device: torch.device
    amp_dtype: torch.dtype | None
    dataset: CocoInstances
    model: CenterMask
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    recipe: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state_path(self) -> Path:
        return self.args.out / "last.pth"

    @property
    def export_path(self) -> Path:
        return self.args.out / "model.pth"

    def save(self, iteration: int, metrics: dict[str, Any] | None = None) -> None:
        """Write the resumable state and the exported fp16 inference weights (with recipe and history)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": iteration,
        }
        torch.save(state, self.state_path.with_suffix(".tmp"))
        self.state_path.with_suffix(".tmp").replace(self.state_path)
        metadata = {
            "iteration": iteration,
            "recipe": self.recipe,
            "history": self.history[-50:],
            "category_ids": self.dataset.category_ids,
        }
        if metrics:
            metadata["metrics"] = metrics
        overrides = {
            k: v
            for k, v in (
                ("min_size_test", self.args.test_min_size),
                ("max_size_test", self.args.test_max_size),
            )
            if v
        }
        save_checkpoint(
            self.export_path,
            self.model,
            self.dataset.class_names,
            metadata,
            torch.float16,
            overrides,
            category_ids=self.dataset.category_ids,
        )


def augmentation_from(args: argparse.Namespace) -> Augmentation:
    """The preset named by --augmentation with every probability flag given on top."""
    chosen = {
        name: getattr(args, name) for name in AUGMENTATION_PROBABILITIES if getattr(args, name) is not None
    }
    return dataclasses.replace(AUGMENTATIONS[args.augmentation], **chosen)


def build_run(args: argparse.Namespace) -> Run:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    augmentation = augmentation_from(args)
    dataset = CocoInstances(
        args.train_json,
        args.train_images,
        min_sizes=args.min_sizes,
        max_size=args.max_size,
        augmentation=augmentation,
        keep_empty=args.keep_empty_images,
    )
    config = get_config(args.config).with_overrides(num_classes=len(dataset.class_names))
    model = CenterMask(config, norm=nn.BatchNorm2d).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(args.precision, device)
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    recipe["augmentation_settings"] = dataclasses.asdict(augmentation)
    args.out.mkdir(parents=True, exist_ok=True)
    return Run(
        args=args,
        device=device,
        amp_dtype=amp_dtype,
        dataset=dataset,
        model=model,
        optimizer=torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr),
        scaler=torch.amp.GradScaler(enabled=amp_dtype == torch.float16),
        recipe=recipe,
    )


def restore(run: Run) -> int:
    """Load what the arguments ask to start from; return the iteration to start at."""
    args = run.args
    if args.resume and run.state_path.is_file():
        state = load_torch_file(run.state_path, map_location=run.device)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {run.state_path} at iteration {state['iteration']}", file=sys.stderr)
        return int(state["iteration"])
    if args.resume and run.export_path.is_file():
        # Only the exported (possibly fp16) weights travelled: continue the schedule with a fresh optimiser.
        initialise_from(run.model, run.export_path, run.dataset.class_names)
        start = int(read_checkpoint(run.export_path).metadata.get("iteration", 0))
        print(
            f"resumed weights from {run.export_path} at iteration {start} (new optimiser state)",
            file=sys.stderr,
        )
        return start
    if args.init:
        reset = initialise_from(run.model, args.init, run.dataset.class_names)
        print(
            f"initialised from {args.init}; re-initialised {len(reset)} class-specific tensors",
            file=sys.stderr,
        )
    return 0


class StopRequest:
    """Set by SIGTERM or SIGINT: the loop saves and stops after the current iteration."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, _frame: object) -> None:
        print(f"\nsignal {signum}: saving and stopping after this iteration", file=sys.stderr)
        self.requested = True


def train_step(run: Run, samples: list[dict[str, Any]], iteration: int) -> tuple[dict[str, float], float]:
    """One optimisation step; returns the loss values and the learning rate used."""
    lr = learning_rate(iteration, run.args)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(
        run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
    ):
        losses = training_losses(
            run.model, samples, run.args.class_exclusion_weight, run.args.background_weight
        )
    total = functools.reduce(operator.add, losses.values())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss at iteration {iteration}: {losses}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 10.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return {k: float(v.detach()) for k, v in losses.items()}, lr


def train(run: Run, start: int, stop: StopRequest) -> int:
    """Iterate from ``start`` to --iters (or a stop request), checkpointing and validating as asked."""
    args = run.args
    loader = DataLoader(
        run.dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
        worker_init_fn=_leave_signals_to_the_trainer,
    )
    progress = Progress(args.iters, args.log_every)
    batches = endless(loader)
    run.model.train()
    iteration = start
    while iteration < args.iters and not stop.requested:
        started = time.perf_counter()
        values, lr = train_step(run, next(batches), iteration)
        iteration += 1
        if iteration % args.log_every == 0:
            run.history.append({"iteration": iteration, "lr": lr, **values})
        progress.update(iteration, time.perf_counter() - started, values, lr)
        if iteration % args.checkpoint_every == 0:
            run.save(iteration)
        if args.keep_every and iteration % args.keep_every == 0:
            if iteration % args.checkpoint_every:
                run.save(iteration)
            shutil.copyfile(run.export_path, args.out / f"model-{iteration:06d}.pth")
        # The last iteration's evaluation is main's (it runs after the final save), not a second one here.
        if args.val_json and args.eval_every and iteration % args.eval_every == 0 and iteration < args.iters:
            run.save(iteration)
            run.save(iteration, run_validation(run.export_path, args))
            run.model.train()
    return iteration


def _leave_signals_to_the_trainer(_worker_id: int) -> None:
    """Data workers ignore SIGTERM/SIGINT: a signal sent to the whole process group (Ctrl-C, `kill` of
    the group, a container stop) must let the trainer save and stop, not kill the worker it waits on."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = build_run(args)
    start = restore(run)
    stop = StopRequest()
    iteration = train(run, start, stop)
    run.save(iteration)
    if args.val_json and not stop.requested:
        metrics = run_validation(run.export_path, args)
        run.save(iteration, metrics)
    print(f"saved {run.export_path} at iteration {iteration}", file=sys.stderr)
    return 0


def run_validation(weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    from model.inference.load import load_predictor
    from training.evaluate import evaluate, format_table

    predictor = load_predictor(weights, device=args.device)
    metrics = evaluate(predictor, args.val_json, args.val_images or args.train_images, args.val_max_images)
    print(format_table(metrics), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    raise SystemExit(main())
