"""`python -m model.export --weights W [--config C] --out model.onnx [--opset N]`: the network as two ONNX graphs.

Writes `model.detector.onnx` and `model.mask_head.onnx` (`model.onnx.contract` says what each takes and
gives; docs/onnx.md how to serve them). The work is `model.onnx.export`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from model.inference.options import add_arguments
from model.onnx.contract import ExportedGraphs, graph_paths, provenance
from model.onnx.export import DEFAULT_OPSET, export_model
from model.weights import DEFAULT_WEIGHTS
from model.weights.checkpoint import load_model

__all__ = ["ExportedGraphs", "export_model", "graph_paths", "main", "provenance"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.split("\n\n")[0])
    add_arguments(parser, ("weights", "config"))
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="model.onnx: writes model.detector.onnx and model.mask_head.onnx",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    args = parser.parse_args(argv)
    weights = args.weights or DEFAULT_WEIGHTS
    model, class_names, _ = load_model(weights, args.config)
    try:
        graphs = export_model(model, provenance(model.config, class_names, weights), args.opset)
    except ValueError as error:
        parser.error(str(error))
    for path in graphs.save(args.out):
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
