"""Import paths and commands from before the present layout (docs/architecture.md), kept working.

`import model.detections` gives the module `model.inference.detections` itself (the same objects, so
`isinstance` and pickles agree), and `python -m model.train` runs `training.train`. Each old name raises a
DeprecationWarning naming its new home. Nothing in this repository imports the old names (a test checks).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

# Old module → new module. A moved package also moves its submodules (model.data.shapes).
MOVED = {
    "model.backbone": "model.network.backbones",
    "model.backends": "model.inference.backends",
    "model.centermask": "model.network.centermask",
    "model.checkpoint": "model.weights.checkpoint",
    "model.coco_classes": "model.weights.coco_classes",
    "model.configs": "model.network.configs",
    "model.data": "training.data",
    "model.deform_conv": "model.network.deform_conv",
    "model.dense": "model.inference.dense",
    "model.detections": "model.inference.detections",
    "model.evaluate": "training.evaluate",
    "model.fpn": "model.network.fpn",
    "model.fusion": "model.inference.fusion",
    "model.images": "model.inference.images",
    "model.layers": "model.network.layers",
    "model.masks": "model.inference.masks",
    "model.mobilenet": "model.network.backbones.mobilenet",
    "model.onnx_backend": "model.onnx.engine",
    "model.polygons": "model.wire.polygons",
    "model.precision": "model.inference.precision",
    "model.processing": "model.inference.preprocess",
    "model.quantize": "model.inference.quantize",
    "model.resnet": "model.network.backbones.resnet",
    "model.rle": "centermask_client.rle",
    "model.testing": "tests.rule_weights",
    "model.train": "training.train",
    "model.vovnet": "model.network.backbones.vovnet",
}


def new_name(old: str) -> str | None:
    """The present name of a module known by `old`, or None if it did not move."""
    for moved, present in MOVED.items():
        if old == moved or old.startswith(moved + "."):
            return present + old[len(moved) :]
    return None


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        present = new_name(fullname)
        if present is None:
            return None
        found = importlib.util.find_spec(present)
        if found is None:
            return None
        return importlib.util.spec_from_loader(
            fullname,
            _MovedLoader(present, found),
            origin=found.origin,
            is_package=found.submodule_search_locations is not None,
        )


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, present: str, found: importlib.machinery.ModuleSpec) -> None:
        self.present = present
        self.found = found

    def exec_module(self, module: ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.present} (docs/architecture.md)",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system returns whatever sits in sys.modules under the old name after this: the module
        # of the present name, never a second copy of it.
        sys.modules[module.__name__] = importlib.import_module(self.present)

    def get_code(self, fullname: str) -> CodeType | None:
        """The present module's code, for `python -m <old name>`."""
        loader = self.found.loader
        get_code = getattr(loader, "get_code", None)
        return get_code(self.present) if get_code is not None else None


def install() -> None:
    """Let the old names resolve (once per process)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
