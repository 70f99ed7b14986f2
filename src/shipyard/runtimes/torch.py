"""PyTorch TorchScript modules (`torch.jit.save` archives), on the GPU when one is present."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import MissingExtra
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors

SUFFIXES = (".pt", ".pth", ".torchscript")


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zips holding compiled code; plain torch.save files are not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _jit_load(torch: Any, path: Path) -> Any:
    jit: Any = torch.jit  # torch.jit.load is untyped
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript for torch.export; models in the wild still use it.
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
        return jit.load(str(path), map_location="cpu")


class TorchScriptRuntime:
    def __init__(self, module: Any, torch: Any) -> None:
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module = module.to(self.device).eval()
        arguments = module.forward.schema.arguments[1:]  # skip self
        self.argument_names = [argument.name for argument in arguments]

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        if len(inputs) == 1 and len(self.argument_names) == 1:
            ordered = list(inputs.values())
        else:
            ordered = [inputs[name] for name in self.argument_names]
        tensors = [self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in ordered]
        with self.torch.inference_mode():
            result = self.module(*tensors)
        if isinstance(result, dict):
            return {str(k): v.cpu().numpy() for k, v in result.items()}
        if isinstance(result, tuple | list):
            return {f"output-{i}": v.cpu().numpy() for i, v in enumerate(result)}
        return {"predict": result.cpu().numpy()}


class TorchScriptFlavor:
    name = "torchscript"
    extra = "torch"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_file() or path.suffix.lower() not in SUFFIXES:
            raise NotThisFlavor("not a .pt/.pth/.torchscript file")
        if not _is_torchscript_archive(path):
            raise NotThisFlavor("not a TorchScript archive (save with torch.jit.save)")
        try:
            import torch
        except ImportError:
            raise MissingExtra("torch", self.extra) from None
        # Loading unpickles the archive's constants: this runs in the throw-away process
        # that inspects models (runtimes.detect), never in the server.
        try:
            module = _jit_load(torch, path)
        except MemoryError:  # the memory limit of the inspecting process: said as such
            raise
        except Exception as exc:  # torch reports a damaged archive as RuntimeError and more
            raise NotThisFlavor(f"TorchScript cannot load it: {type(exc).__name__}") from None
        arguments = [a.name for a in module.forward.schema.arguments[1:]]
        return Inspection(
            flavor=self.name,
            details={"forward_arguments": arguments, "library_version": torch.__version__},
            # TorchScript runs in torch's own interpreter, but the archive still holds
            # pickled constants: treat it like other formats that execute on load.
            unsafe_format=True,
        )

    def load(self, spec: LoadSpec) -> TorchScriptRuntime:
        try:
            import torch
        except ImportError:
            raise MissingExtra("torch", self.extra) from None
        torch.set_num_threads(1)  # parallelism comes from worker processes
        return TorchScriptRuntime(_jit_load(torch, spec.path), torch)
