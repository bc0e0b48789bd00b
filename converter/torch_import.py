"""torch.nn.Module -> spikeforge IR, through ONNX (the same importer, so the same ops and errors);
torch.export (dynamo) by default, the legacy TorchScript exporter on request.

    graph = from_torch(model, input_shape=(8, 8))

Supports what the ONNX importer supports: Linear, ReLU, Hardtanh(0, m) / clamp(0, m),
Flatten, Dropout, BatchNorm1d after Linear, a final (Log)Softmax.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def torch_message(exc: BaseException) -> str:
    """The essential message of a torch error: the first non-empty line of the innermost
    cause that has one (torch.onnx wraps the real error in step-by-step advice), ANSI
    colour codes stripped, at most 200 characters."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):
        lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
        if lines:
            return lines[0][:200]
    return type(exc).__name__


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.export logs every failed fake-tensor dispatch as E-lines and prints the traced
    graphs on stderr when it fails: the error raised says why, once."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


@contextmanager
def _eval_mode(model: "torch.nn.Module") -> Iterator[None]:
    """``model`` and every submodule in eval mode, their training flags restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _check_shape(model: "torch.nn.Module", input_shape: tuple[int, ...]) -> None:
    """Run ``model`` once on zeros (1, *input_shape): a shape that does not fit is reported
    by torch's own message, not by the exporter's."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    except Exception as exc:  # torch raises many kinds: say which module, which shape, why
        raise SpikeforgeError(f"{type(model).__name__}: input shape {input_shape} (per sample, without the "
                              f"batch dimension) does not fit the module: {torch_message(exc)}") from None


def from_torch(model: "torch.nn.Module", input_shape: Sequence[int], exporter: str = "dynamo") -> ir.Graph:
    """Export ``model`` (in eval mode; its training flags are restored afterwards) for the
    per-sample ``input_shape`` (without the batch dimension) to ONNX with ``exporter``
    ('dynamo': torch.export, the default; 'torchscript': the legacy exporter) and import it."""
    if exporter not in EXPORTERS:
        raise SpikeforgeError(f"exporter: expected one of {', '.join(EXPORTERS)}, found {exporter!r}")
    shape = tuple(int(d) for d in input_shape)
    with _eval_mode(model), tempfile.TemporaryDirectory() as tmp:
        _check_shape(model, shape)
        path = Path(tmp) / f"{type(model).__name__}.onnx"
        try:
            with _quiet_torch():
                _export(model, shape, path, exporter)
        except Exception as exc:  # torch raises many kinds; say which module failed and why
            raise UnsupportedError(f"{type(model).__name__}: torch could not export it to ONNX "
                                   f"({exporter}: {torch_message(exc)})") from None
        try:
            graph = load_onnx(path)
        except SpikeforgeError as exc:  # name the module, not the temporary file
            raise type(exc)(str(exc).replace(str(path), f"torch module {type(model).__name__}")) from None
    return graph.with_metadata(source=f"torch:{type(model).__name__}", exporter=exporter)
