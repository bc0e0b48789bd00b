"""torch.nn.Module -> spikeforge IR, through ONNX (the same importer, so the same ops and errors);
torch.export (dynamo) by default, the legacy TorchScript exporter on request.

    graph = from_torch(model, input_shape=(8, 8))

Supports what the ONNX importer supports: Linear, ReLU, Hardtanh(0, m) / clamp(0, m),
Flatten, Dropout, BatchNorm1d after Linear, a final (Log)Softmax.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from spikeforge import ir
from spikeforge.converter.onnx_import import load_onnx
from spikeforge.errors import SpikeforgeError, UnsupportedError

if TYPE_CHECKING:
    import torch


EXPORTERS = ("dynamo", "torchscript")


def _export(model: "torch.nn.Module", input_shape: Sequence[int], path: Path, exporter: str) -> None:
    import torch

    example = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":  # torch.export (needs onnxscript)
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["input"],
                              output_names=["output"], dynamic_shapes=({0: batch},), opset_version=18,
                              verbose=False, optimize=True)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=17)


def from_torch(model: "torch.nn.Module", input_shape: Sequence[int], exporter: str = "dynamo") -> ir.Graph:
    """Export ``model`` (eval mode, per-sample ``input_shape``) to ONNX with ``exporter``
    ('dynamo': torch.export, the default; 'torchscript': the legacy exporter) and import it."""
    if exporter not in EXPORTERS:
        raise SpikeforgeError(f"exporter: expected one of {', '.join(EXPORTERS)}, found {exporter!r}")
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{type(model).__name__}.onnx"
        try:
            _export(model, input_shape, path, exporter)
        except Exception as exc:  # torch raises many kinds; say which module failed and why
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UnsupportedError(f"{type(model).__name__}: torch could not export it to ONNX "
                                   f"({exporter}: {first})") from None
        try:
            graph = load_onnx(path)
        except SpikeforgeError as exc:  # name the module, not the temporary file
            raise type(exc)(str(exc).replace(str(path), f"torch module {type(model).__name__}")) from None
    return graph.with_metadata(source=f"torch:{type(model).__name__}", exporter=exporter)
