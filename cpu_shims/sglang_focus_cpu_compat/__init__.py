"""Lets the CUDA-only torchvision wheel import next to a CPU build of torch.

torchvision's Python code registers fake kernels for `torchvision::nms` and `torchvision::qnms`, operators its
compiled extension would define. That extension does not load against CPU torch, so the registration raises
"operator torchvision::nms does not exist" and, through transformers, every `import sglang` fails. We define
the two operator schemas (no kernels) just before torchvision is first imported.

`install()` runs from a .pth file at interpreter start-up, so it must stay cheap: it imports nothing heavy and
only adds a finder to `sys.meta_path`; torch is imported when torchvision itself is.
"""

from __future__ import annotations

import importlib.abc
import sys

# Schemas as torchvision 0.28 declares them in its C++ extension.
TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_libraries = []  # keeps the torch.library.Library objects alive: dropping one undefines its operators


def _operator_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name).default
    except (AttributeError, RuntimeError):
        return False
    return True


def define_torchvision_schemas() -> list[str]:
    """Define each missing torchvision operator schema; return the names defined."""
    import torch

    missing = [s for s in TORCHVISION_SCHEMAS if not _operator_exists(s.split("(", 1)[0])]
    if not missing:
        return []
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        library.define(schema)
    _libraries.append(library)
    return [s.split("(", 1)[0] for s in missing]


class _BeforeTorchvisionImport(importlib.abc.MetaPathFinder):
    """Runs `define_torchvision_schemas` once, when `torchvision` is about to be imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_torchvision_schemas()
        return None  # the regular finders import the module


def install() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvisionImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvisionImport())
