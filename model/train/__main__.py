"""Train CenterMask on COCO-format data: `python -m model.train --config NAME --train-json GT.json ...`.

The backbone trains with ordinary BatchNorm, whose eval-mode computation is exactly the frozen batch norm of
the inference model, so exported checkpoints keep the official key layout. Training state is saved to
`OUT/last.pth` (resumable) and the inference weights to `OUT/model.pth` (our checkpoint format).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from model.centermask import CenterMask
from model.checkpoint import CheckpointError, load_torch_file, read_checkpoint, save_checkpoint
from model.configs import get_config
from model.data.coco import CocoInstances, collate
from model.train.step import training_losses

# Layers whose shape depends on the class count: re-initialised when fine-tuning to other classes.
CLASS_SPECIFIC = (
    "proposal_generator.fcos_head.cls_logits.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.maskiou_head.maskiou.",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="architecture, e.g. centermask_lite_V_19_slim_eSE_FPN_ms_4x"
    )
    parser.add_argument("--train-json", type=Path, required=True)
    parser.add_argument("--train-images", type=Path, required=True)
    parser.add_argument("--val-json", type=Path)
    parser.add_argument("--val-images", type=Path)
    parser.add_argument("--val-max-images", type=int, default=100, help="images evaluated at checkpoints")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, help="initial weights (official or ours); class layers reset")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth (or OUT/model.pth)")
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-iters", type=int, default=300)
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[256, 288, 320, 352, 384, 416])
    parser.add_argument("--max-size", type=int, default=704)
    parser.add_argument("--test-min-size", type=int, help="test-time short side stored in the checkpoint")
    parser.add_argument("--test-max-size", type=int, help="test-time long-side cap stored in the checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW weights (channels-last trains ~1.5x faster on CPU with bf16)",
    )
    parser.add_argument("--workers", type=int, default=1, help="data loading processes")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the end")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


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


def initialise_from(model: CenterMask, path: Path) -> list[str]:
    """Load every matching tensor of a checkpoint; class-specific layers may differ. Returns the reset keys."""
    source = read_checkpoint(path).state_dict
    target = model.state_dict()
    reset = [
        k
        for k in target
        if k.startswith(CLASS_SPECIFIC) and k in source and source[k].shape != target[k].shape
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
    decay, no_decay = [], []
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = autocast_dtype(args.precision, device)

    dataset = CocoInstances(
        args.train_json, args.train_images, min_sizes=args.min_sizes, max_size=args.max_size
    )
    config = get_config(args.config).with_overrides(num_classes=len(dataset.class_names))
    model = CenterMask(config, norm=nn.BatchNorm2d).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr)
    scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
    overrides = {
        k: v for k, v in (("min_size_test", args.test_min_size), ("max_size_test", args.test_max_size)) if v
    }
    args.out.mkdir(parents=True, exist_ok=True)
    state_path, export_path = args.out / "last.pth", args.out / "model.pth"

    start = 0
    if args.resume and state_path.is_file():
        state = load_torch_file(state_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
        print(f"resumed from {state_path} at iteration {start}", file=sys.stderr)
    elif args.resume and export_path.is_file():
        # Only the exported (possibly fp16) weights travelled: continue the schedule with a fresh optimiser.
        initialise_from(model, export_path)
        start = int(read_checkpoint(export_path).metadata.get("iteration", 0))
        print(
            f"resumed weights from {export_path} at iteration {start} (new optimiser state)", file=sys.stderr
        )
    elif args.init:
        reset = initialise_from(model, args.init)
        print(
            f"initialised from {args.init}; re-initialised {len(reset)} class-specific tensors",
            file=sys.stderr,
        )

    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    history: list[dict[str, Any]] = []

    def save(iteration: int, metrics: dict[str, Any] | None = None) -> None:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration},
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)
        metadata = {"iteration": iteration, "recipe": recipe, "history": history[-50:]}
        if metrics:
            metadata["metrics"] = metrics
        save_checkpoint(export_path, model, dataset.class_names, metadata, torch.float16, overrides)

    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        print(f"\nsignal {signum}: saving and stopping after this iteration", file=sys.stderr)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    progress = Progress(args.iters, args.log_every)
    batches = endless(loader)
    model.train()
    iteration = start
    while iteration < args.iters and not stop["requested"]:
        started = time.perf_counter()
        samples = next(batches)
        lr = learning_rate(iteration, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = training_losses(model, samples)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at iteration {iteration}: {losses}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(optimizer)
        scaler.update()
        iteration += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        if iteration % args.log_every == 0:
            history.append({"iteration": iteration, "lr": lr, **values})
        progress.update(iteration, time.perf_counter() - started, values, lr)
        if iteration % args.checkpoint_every == 0:
            save(iteration)
        if args.val_json and args.eval_every and iteration % args.eval_every == 0:
            save(iteration)
            save(iteration, run_validation(export_path, args))
            model.train()

    save(iteration)
    metrics = None
    if args.val_json and not stop["requested"]:
        metrics = run_validation(export_path, args)
        save(iteration, metrics)
    print(f"saved {export_path} at iteration {iteration}", file=sys.stderr)
    if metrics:
        print(json.dumps(metrics), file=sys.stderr)
    return 0


def run_validation(weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    from model.evaluate import evaluate, format_table
    from model.predict import load_predictor

    predictor = load_predictor(weights, device=args.device)
    metrics = evaluate(predictor, args.val_json, args.val_images or args.train_images, args.val_max_images)
    print(format_table(metrics), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    raise SystemExit(main())
