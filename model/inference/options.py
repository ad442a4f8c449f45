"""How a predictor is built: the one declaration of its options, and the command-line flags derived from it.

Everything that chooses and builds a predictor is a field of `PredictorOptions`, with its type, default and
help text. The rest derives from it: `load_predictor` takes the fields as keywords, the service's `Settings`
inherits them (`CENTERMASK_PRECISION`, `--precision`), a repository's `config.json` is read by it, and every
model command line gets one flag per field from `add_arguments`. Adding an option is adding a field here.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from model.inference.backends import Backend
from model.inference.precision import Precision


class Metavar(str):
    """`Annotated` metadata naming what a flag takes, where the type alone does not say it."""


# Flags that older command lines spelled differently, still accepted.
_FORMER_FLAGS = {"onnx_model": ("--onnx",)}


class PredictorOptions(BaseModel):
    """Which weights to load, where and how to run them, and how to decode images for them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: Path | None = Field(
        None,
        description="Checkpoint: one of ours, or an official centermask2 .pth/.pkl. Unset: the bundled model "
        "(five synthetic shapes).",
    )
    config: str | None = Field(
        None,
        description="Architecture of an official checkpoint, e.g. centermask_lite_V_39_eSE_FPN_ms_4x. Unset: "
        "read from the checkpoint (ours record it).",
    )
    device: Annotated[
        str, StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$"), Metavar("{auto,cpu,cuda,cuda:N}")
    ] = Field(
        "auto",
        description="auto takes CUDA when available, else the CPU; cuda or cuda:N fails without it. "
        "onnxruntime always runs on the CPU.",
    )
    precision: Precision = Field(
        Precision.FP32,
        description="fp32: exact to the official outputs; bf16: CPUs with AVX-512 BF16/AMX, and CUDA; "
        "fp16: CUDA; int8: CPUs with AVX-512 VNNI/AMX. One the device cannot run is refused before the "
        "weights are read.",
    )
    backend: Backend = Field(
        Backend.TORCH,
        description="What runs the network: torch, or onnxruntime (the network exported to ONNX, run by "
        "ONNX Runtime on the CPU in fp32; needs the [onnx] extra).",
    )
    onnx_model: Path | None = Field(
        None,
        description="With backend onnxruntime: the graphs `python -m model.export --out` wrote for these "
        "weights (e.g. /models/centermask.onnx). Unset: exported while loading.",
    )
    compile: bool = Field(
        False,
        description="Compile the backbone, FPN and FCOS head with torch.compile for every warmed-up shape "
        "(warm-up then takes minutes; other shapes run eagerly). If compiling fails, a warning says why and "
        "the network runs eagerly. Not bit-exact: fp32 results differ by float rounding.",
    )
    cuda_graphs: bool = Field(
        False,
        description="Capture the backbone, FPN and FCOS head as CUDA graphs for every warmed-up shape and "
        "batch size, and replay them (less CPU launch overhead). CUDA only: refused without a CUDA device. "
        "If a capture fails, a warning says why and the network runs eagerly.",
    )
    jpeg_draft: bool = Field(
        False,
        description="Decode a JPEG that the model shrinks by 2x or more at 1/2, 1/4 or 1/8 scale (libjpeg "
        "DCT scaling): much faster decoding of large photos, slightly different pixels. Results stay in the "
        "full image's pixels.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.onnx_model is not None and self.backend is not Backend.ONNXRUNTIME:
            raise ValueError(
                "exported ONNX graphs (onnx_model) are run by the onnxruntime backend: set backend onnxruntime "
                "too (--backend onnxruntime; the service: CENTERMASK_BACKEND=onnxruntime)"
            )
        return self

    @classmethod
    def of(cls, *values: Any, **fields: Any) -> PredictorOptions:
        """Options from positional values (in field order: weights, config, device, precision, ...) and
        keywords; `onnx` is the former name of `onnx_model`."""
        if len(values) > len(cls.model_fields):
            raise TypeError(f"at most {len(cls.model_fields)} options, got {len(values)}")
        named = dict(zip(cls.model_fields, values, strict=False))
        if "onnx" in fields:
            fields["onnx_model"] = fields.pop("onnx")
        clash = named.keys() & fields.keys()
        if clash:
            raise TypeError(f"options given twice: {', '.join(sorted(clash))}")
        return cls(**named, **{name: value for name, value in fields.items() if value is not None})

    def predictor_options(self) -> PredictorOptions:
        """These options alone (for a subclass such as the service's settings, its predictor's part)."""
        return PredictorOptions(**{name: getattr(self, name) for name in PredictorOptions.model_fields})


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per option (`--cuda-graphs`, `--precision bf16`), with its help text and default; `names`
    chooses some (a command that only reads weights, say)."""
    group = parser.add_argument_group("model", "which weights to run, where and how")
    for name, field in PredictorOptions.model_fields.items():
        if names is not None and name not in names:
            continue
        flags = [f"--{name.replace('_', '-')}", *_FORMER_FLAGS.get(name, ())]
        kind = _argument_type(field.annotation)
        help_text = field.description or ""
        if kind is bool:
            group.add_argument(*flags, dest=name, action="store_true", help=help_text)
            continue
        metavar = next((item for item in field.metadata if isinstance(item, Metavar)), None)
        if metavar is None and kind is Path:
            metavar = Metavar("PATH")
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = [member.value for member in kind]
            group.add_argument(
                *flags,
                dest=name,
                choices=choices,
                default=field.default.value,
                help=f"{help_text} (default {field.default.value})",
            )
            continue
        default = field.default
        suffix = f" (default {default})" if default is not None else ""
        group.add_argument(
            *flags, dest=name, type=kind, default=default, metavar=metavar, help=help_text + suffix
        )


def from_arguments(args: argparse.Namespace) -> PredictorOptions:
    """The options that `add_arguments`' flags parsed into."""
    return PredictorOptions(**{name: getattr(args, name) for name in PredictorOptions.model_fields})


def _argument_type(annotation: Any) -> Any:
    """The value type of a field for argparse: Path, str, bool or an Enum (None dropped from optionals)."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    arguments = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if arguments and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = arguments[0]
    return annotation
