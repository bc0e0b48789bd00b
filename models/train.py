"""Deterministic CPU training of :class:`RateMLP`, ONNX export (verified) and ONNX evaluation."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from spikeforge import progress
from spikeforge.data import Dataset, split
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.fileio import atomic_path
from spikeforge.models.cnn import RateCNN
from spikeforge.models.mlp import RateMLP

#: Largest |onnxruntime - torch| logit difference export_onnx accepts.
EXPORT_TOLERANCE = 1e-4
OPSET = 17


@contextlib.contextmanager
def _deterministic(seed: int, threads: int | None) -> Iterator[None]:
    """Seed torch, use deterministic algorithms and a fixed thread count; restore on exit."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.set_num_threads(prev_threads)


def _tensor(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(ds.x, dtype=np.float32).reshape((ds.n,) + tuple(ds.shape)))
    return x, torch.from_numpy(np.asarray(ds.y, dtype=np.int64))


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model`` on ``ds`` (torch, eval mode)."""
    if ds.n == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    x, y = _tensor(ds)
    correct = 0
    for i in range(0, ds.n, batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / ds.n


def fit_classifier(make: Callable[[Dataset, int], nn.Module], train: Dataset, *, who: str,
                   epochs: int, lr: float, seed: int, weight_decay: float = 1e-4, batch_size: int = 64,
                   val: Dataset | None = None, val_fraction: float = 0.1, input_noise: float = 0.0,
                   occlusion: float = 0.0, classes: int | None = None,
                   threads: int | None = 1) -> tuple[nn.Module, dict[str, Any]]:
    """The training loop every spikeforge model shares: Adam on cross-entropy,
    L = -log softmax(z)_y, minibatches, cosine learning-rate decay, CPU only, deterministic for
    a given seed. ``make(fit_set, classes)`` builds the model.

    ``val``: held-out set for ``val_accuracy``; if None, a stratified ``val_fraction`` of
    ``train`` is held out (0 disables). Augmentation (off by default): ``input_noise`` is the
    std of Gaussian noise added to the inputs (then clipped to [0, 1]); ``occlusion`` the
    fraction of input features zeroed at random. ``threads``: torch intra-op threads while
    training (restored after); 1 is fastest for digits-sized models and robust on a shared
    machine (2 threads can be >10x slower under contention); None keeps torch's setting.
    Returns the model (eval mode) and info: train_accuracy, val_accuracy, seconds, epochs,
    final_loss, n_train, n_val, seed.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise DataError(f"{who}: expected epochs >= 1, batch_size >= 1, lr > 0, found "
                        f"{epochs}, {batch_size}, {lr}")
    if not 0.0 <= occlusion < 1.0 or not input_noise >= 0.0:
        raise DataError(f"{who}: expected occlusion in [0, 1) and input_noise >= 0, "
                        f"found {occlusion}, {input_noise}")
    start = time.perf_counter()
    if val is None and val_fraction > 0:
        parts = split(train, (1.0 - val_fraction, 0.0, val_fraction), seed=seed)
        fit, val = parts.train, parts.test
    else:
        fit = train
    n_classes = int(classes) if classes is not None else max(train.classes, val.classes if val else 0)
    with _deterministic(seed, threads), progress.bar(epochs, f"{who}: epochs", unit="epoch") as bar:
        model = make(fit, n_classes)
        x, y = _tensor(fit)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(fit.n / batch_size))
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        model.train()
        final_loss = float("nan")
        for _ in range(epochs):
            order = torch.randperm(fit.n, generator=gen)
            total = 0.0
            for i in range(0, fit.n, batch_size):
                idx = order[i:i + batch_size]
                xb = x[idx]
                if input_noise > 0:
                    xb = (xb + input_noise * torch.randn(xb.shape, generator=gen)).clamp(0.0, 1.0)
                if occlusion > 0:
                    xb = xb * (torch.rand(xb.shape, generator=gen) >= occlusion)
                loss = loss_fn(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
            final_loss = total / fit.n
            bar.update(1)
        model.eval()
        info: dict[str, Any] = {
            "train_accuracy": evaluate(model, fit),
            "val_accuracy": evaluate(model, val) if val is not None and val.n else float("nan"),
            "seconds": time.perf_counter() - start,
            "epochs": epochs,
            "final_loss": final_loss,
            "n_train": fit.n,
            "n_val": val.n if val is not None else 0,
            "seed": seed,
        }
    return model, info


def train_mlp(train: Dataset, hidden: Sequence[int] = (128,), epochs: int = 60, lr: float = 3e-3,
              seed: int = 0, dropout: float = 0.0, **options: Any) -> tuple[RateMLP, dict[str, Any]]:
    """Train a :class:`RateMLP` with :func:`fit_classifier` (``options``: weight_decay,
    batch_size, val, val_fraction, input_noise, occlusion, classes, threads). The info adds
    ``hidden``."""
    model, info = fit_classifier(lambda fit, classes: RateMLP(fit.features, hidden, classes, dropout),
                                 train, who="train_mlp", epochs=epochs, lr=lr, seed=seed, **options)
    info["hidden"] = tuple(int(h) for h in hidden)
    return model, info


def train_cnn(train: Dataset, channels: Sequence[int] = (16, 32), epochs: int = 30, lr: float = 3e-3,
              seed: int = 0, **options: Any) -> tuple[RateCNN, dict[str, Any]]:
    """Train a :class:`RateCNN` on image data (per-sample shape (H, W) or (C, H, W)) with
    :func:`fit_classifier`. The info adds ``channels``."""
    if len(train.shape) not in (2, 3):
        raise DataError(f"train_cnn: expected images of shape (H, W) or (C, H, W), found {train.shape}")
    model, info = fit_classifier(lambda fit, classes: RateCNN(fit.shape, channels, classes),
                                 train, who="train_cnn", epochs=epochs, lr=lr, seed=seed, **options)
    info["channels"] = tuple(int(c) for c in channels)
    return model, info


def _ort_session(path: str | os.PathLike[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: expected a loadable ONNX model, found error: {msg}") from None


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int],
                opset: int = OPSET) -> Path:
    """Export ``model`` to ONNX (TorchScript exporter, input "input" (batch, *input_shape),
    output "logits", dynamic batch) atomically, after checking that onnxruntime's logits match
    torch's to max |diff| < 1e-4 on random rates in [0, 1]. Raises SpikeforgeError otherwise."""
    import onnx

    path = Path(path)
    shape = tuple(int(d) for d in input_shape)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (torch.zeros((2,) + shape),), str(tmp), dynamo=False, opset_version=opset,
                    input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    do_constant_folding=True,
                )
            onnx.checker.check_model(str(tmp))
            gen = torch.Generator().manual_seed(0)
            probe = torch.rand((5,) + shape, generator=gen)
            with torch.no_grad():
                want = model(probe).numpy()
            got = _ort_session(tmp).run(["logits"], {"input": probe.numpy()})[0]
            diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            if not diff < EXPORT_TOLERANCE:
                raise SpikeforgeError(f"{path}: expected onnxruntime logits within {EXPORT_TOLERANCE} of torch, "
                                      f"found max |diff| {diff:.3g} (shapes {got.shape} vs {want.shape})")
    finally:
        model.train(was_training)
    return path


def predict_onnx(path: str | os.PathLike[str], ds: Dataset, batch_size: int = 4096) -> np.ndarray:
    """Logits (n, classes) of the ONNX model at ``path`` on ``ds`` via onnxruntime."""
    if not Path(path).is_file():
        raise DataError(f"{path}: expected an existing ONNX file, found nothing")
    sess = _ort_session(path)
    inp = sess.get_inputs()[0]
    dims = inp.shape[1:]
    if all(isinstance(d, int) for d in dims):
        if math.prod(dims) != ds.features:
            raise DataError(f"{path}: expected {math.prod(dims)} input features {tuple(dims)}, "
                            f"found {ds.features} in dataset '{ds.name}'")
        shape = tuple(dims)
    else:
        shape = tuple(ds.shape)
    x = np.ascontiguousarray(ds.x, dtype=np.float32).reshape((ds.n,) + shape)
    out_name = sess.get_outputs()[0].name
    return np.concatenate([sess.run([out_name], {inp.name: x[i:i + batch_size]})[0]
                           for i in range(0, ds.n, batch_size)])


def evaluate_onnx(path: str | os.PathLike[str], ds: Dataset) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on ``ds`` (onnxruntime, CPU)."""
    logits = predict_onnx(path, ds)
    return float(np.mean(logits.argmax(axis=1) == ds.y))
