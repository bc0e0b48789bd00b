"""The ``spikeforge`` command line: train, convert, export, simulate, verify, sweep, analyze, check, inspect,
deploy, report, hardware."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn, Sequence

import numpy as np

from spikeforge import __version__, ir
from spikeforge.errors import SpikeforgeError
from spikeforge.fileio import check_output
from spikeforge.runner import MEMORY_MB

if TYPE_CHECKING:
    from spikeforge.data import Dataset


def _load_data(spec: str, limit: int | None, labels: bool = True) -> "Dataset":
    from spikeforge import data

    ds = data.load(spec, labels)
    if limit is not None:
        if limit < 1:
            raise SpikeforgeError(f"--limit: expected a positive number of samples, found {limit}")
        ds = ds.head(limit)
    return ds


def _integer(lo: int, hi: int | None = None, unit: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (no upper bound where hi is None); with a
    ``unit``, values above hi are refused as 'at most hi unit'."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if hi is not None and value > hi and unit:
            raise argparse.ArgumentTypeError(f"expected at most {hi} {unit}, found {value}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"in [{lo}, {hi}]" if hi is not None and not unit else f">= {lo}"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, found {value}")
        return value
    return parse


#: Largest T the commands accept (one sample's input alone is T x features values).
MAX_TIMESTEPS = 100_000

_seed = _integer(0, 2**32 - 1)  # a random seed
_count = _integer(0)
_positive = _integer(1)
_steps = _integer(1, MAX_TIMESTEPS, "steps")  # a number of time steps T


#: ONNX op names for IR node types, to show what a bare name (a torch Sequential's "2") is.
_OPS = {"Affine": "Gemm", "FixedAffine": "Gemm", "Conv2d": "Conv", "FixedConv2d": "Conv",
        "AvgPool2d": "AveragePool", "FixedLIF": "IF", "FixedStochastic": "Stochastic"}


def _labeler(snn: "ir.Graph", ann: "ir.Graph | None") -> Callable[[str], str]:
    """name -> 'name (Op)' for names that are bare numbers (the op of the ANN node of that
    name, else of the SNN node); other names as they are."""
    def label(name: str) -> str:
        if not name.isdigit():
            return name
        node = (ann.by_name.get(name) if ann is not None else None) or snn.by_name.get(name)
        if node is None:
            return name
        kind = type(node).__name__
        op = ("Clip" if getattr(node, "upper", None) is not None else "Relu") if kind == "ReLU" else _OPS.get(kind, kind)
        return f"{name} ({op})"
    return label


# -- train --------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from spikeforge import data
    from spikeforge import models  # type: ignore[attr-defined]  # the models/ folder (pyproject)

    out = _new_output(args.output, ".sfg" if args.arch == "recurrent" else ".onnx", args.force)
    calib_out = check_output(args.calib_out or out.parent / "calib.npz", ".npz")
    test_out = check_output(args.test_out or out.parent / "test.npz", ".npz")
    official = data.has_official_split(args.data) and args.split == "official"
    ds = data.load(args.data)
    splits = data.official_split(args.data, seed=args.seed) if official else data.split(ds, seed=args.seed)
    for part in ("train", "calib", "test"):
        if getattr(splits, part).n < 1:
            raise SpikeforgeError(f"{args.data}: expected enough samples for train, calibration and test "
                                  f"splits (70/10/20%), found {ds.n} samples")
    writes = [(calib_out, splits.calib, "--calib-out"), (test_out, splits.test, "--test-out")]
    _refuse_overwrite(writes, args.data, args.force)
    hidden = tuple(args.hidden) if args.hidden else ((16, 32) if args.arch == "cnn" else (128,))
    t0 = time.perf_counter()
    extra = {"epochs": args.epochs} if args.epochs else {}
    if args.arch == "mlp":
        model, info = models.train_mlp(splits.train, hidden=hidden, seed=args.seed, **extra)
        models.export_onnx(model, out, splits.train.shape)
        acc = models.evaluate_onnx(out, splits.test)
    elif args.arch == "cnn":
        if len(ds.shape) not in (2, 3):
            raise SpikeforgeError(f"{args.data}: --arch cnn needs images (H, W) or (C, H, W), found "
                                  f"samples of shape {ds.shape}")
        model, info = models.train_cnn(splits.train, channels=hidden, seed=args.seed, **extra)
        models.export_onnx(model, out, model.input_shape)  # (C, H, W): single-channel data gets C = 1
        acc = models.evaluate_onnx(out, splits.test)
    else:  # ONNX cannot express the one-step-delayed recurrence: a spikeforge ANN graph file
        model, info = models.train_recurrent(splits.train, hidden=hidden, iterations=args.iterations,
                                             feedback=not args.no_feedback, seed=args.seed, **extra)
        models.save_recurrent(model, out)
        acc = models.evaluate(model, splits.test)
    for path, subset, _ in writes:
        if not _same_split(path, subset):
            data.save_npz(path, subset)
    print(f"trained {args.arch} {ds.shape}->{hidden}->{int(ds.y.max()) + 1} on {len(splits.train.y)} samples "
          f"of '{ds.name}' in {time.perf_counter() - t0:.1f} s; test accuracy {100 * acc:.2f}%")
    print(f"wrote {out}, calibration split {calib_out} ({len(splits.calib.y)}), test split {test_out} ({len(splits.test.y)})")
    return 0


def _new_output(path: str | Path, suffix: str | None, force: bool) -> Path:
    """An output the command may write: :func:`check_output`'s checks, and a file already
    there is the user's: refused by name unless --force."""
    out = check_output(path, suffix)
    if out.exists() and not force:
        raise SpikeforgeError(f"{out}: expected a new file, found an existing one (pass --force to "
                              f"replace it, or name another)")
    return out


def _same_split(path: Path, part: "Dataset") -> bool:
    """``path`` exists and holds exactly these samples and labels (e.g. the split of an
    earlier train on the same data and seed)."""
    if not path.is_file():
        return False
    from spikeforge import data

    try:
        old = data.load_npz(path)
    except SpikeforgeError:
        return False
    return (old.x.shape == part.x.shape and np.array_equal(old.x, part.x)
            and np.array_equal(old.y, part.y))


def _refuse_overwrite(writes: list, data_spec: str, force: bool) -> None:
    """train writes the splits beside the model: never over the --data input, nor (without
    --force) over a different data file already there (a user's own test set, say)."""
    source = Path(data_spec).resolve() if data_spec != "digits" else None
    paths = [p.resolve() for p, _, _ in writes]
    if len(set(paths)) < len(paths):
        raise SpikeforgeError(f"{writes[0][0]}: expected different files for the calibration and test splits, "
                              f"found the same name twice")
    for (path, part, option), resolved in zip(writes, paths):
        if source is not None and resolved == source:
            raise SpikeforgeError(f"{path}: expected a new file for the {option[2:-4]} split, found the --data "
                                  f"input itself (name another with {option})")
        if path.exists() and not force and not _same_split(path, part):
            raise SpikeforgeError(f"{path}: expected a new file for the {option[2:-4]} split, found an existing "
                                  f"file with other data (pass --force to overwrite it, or name another "
                                  f"with {option})")


# -- convert ------------------------------------------------------------------------------------
def _import_model(path: Path, dt: str | None = None) -> "ir.Graph":
    suffix = path.suffix.lower()
    if suffix == ".nir":
        import warnings

        from spikeforge.converter.nir_io import NIRImportWarning, load_nir

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NIRImportWarning)
            graph = load_nir(path, dt)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        return graph
    if suffix == ".onnx":
        from spikeforge.converter.onnx_import import load_onnx

        return load_onnx(path)
    if suffix == ".sfg":
        from spikeforge import graphio

        return graphio.load(path, "ann")
    raise SpikeforgeError(f"{path}: expected a model file ending in .onnx, .sfg (an ANN graph) or .nir, found '{suffix or 'no suffix'}'")


#: convert's options that shape an ANN's conversion, and their defaults (the parser's too).
ANN_OPTIONS: dict[str, object] = {"reset": None, "neuron": "if", "target": "spikeforge",
                                  "normalize": "percentile", "percentile": 99.9}


def _refuse_ann_options(args: argparse.Namespace, model: Path, recorded: bool) -> None:
    """Options that shape an ANN's conversion cannot change a spiking source: refuse them by
    name rather than ignore them (a user asking for --reset subtract must not get reset to zero)."""
    given = [f"--{name} {getattr(args, name)}" for name, default in ANN_OPTIONS.items()
             if getattr(args, name) != default]
    if given:
        what = ("holds the quantized graph spikeforge exported (recorded in its metadata)" if recorded
                else "is a spiking network (its neurons and resets are as NIR states them)")
        raise SpikeforgeError(f"{', '.join(given)}: {model} {what}; these options convert ANNs: "
                              f"convert the source ANN again to change them")


def cmd_convert(args: argparse.Namespace) -> int:
    from spikeforge import graphio
    from spikeforge.converter.passes import convert, layer_reports

    model, out = Path(args.model), Path(args.output)
    if out.resolve() == model.resolve():
        raise SpikeforgeError(f"-o {out}: expected a new file, found the input model's name")
    out = _new_output(out, ".sfg", args.force)
    if args.percentile != ANN_OPTIONS["percentile"] and args.normalize != "percentile":
        raise SpikeforgeError(f"--percentile {args.percentile}: applies to --normalize percentile, "
                              f"found --normalize {args.normalize}")
    ann = _import_model(model, args.dt)
    if not ann.of_type(*ir.SYNAPSES):
        found = sorted({type(n).__name__ for n in ann.nodes} - {"Input", "Output"}) or ["no layers"]
        raise SpikeforgeError(f"{model}: nothing to convert: expected at least one dense or convolution "
                              f"layer (Gemm, MatMul, Conv), found {', '.join(found)}")
    quantized = ann.is_fixed()  # a NIR file spikeforge wrote: its recorded graph
    spiking_source = quantized or bool(ann.of_type(ir.IF, ir.LIF, ir.Stochastic))
    if spiking_source:
        _refuse_ann_options(args, model, quantized)
        calib_x = np.zeros((0, ann.inputs[0].out_size))
        calib_note = (("the quantized graph recorded in the file" if quantized else "a spiking source: quantized directly")
                      + ("; --calib not used" if args.calib else ""))
    else:
        if args.calib is None:
            raise SpikeforgeError(f"--calib: required to normalize the ANN {model} (a .npz with x, or 'digits')")
        calib = _load_data(args.calib, None, labels=False)
        calib_x = _features(calib, ann.inputs[0].out_size, args.calib)
        calib_note = (f"reset by {args.reset or 'subtract'}, normalization {args.normalize}"
                      f"{f' {args.percentile}' if args.normalize == 'percentile' else ''}, "
                      f"calibration {len(calib_x)} samples")
    changes = None
    if quantized:  # unchanged
        snn = ann.with_metadata(source=str(model))
    elif args.target == "netx":
        from spikeforge.converter.netx_io import convert_netx, netx_target_args

        netx_target_args(args)
        snn, changes = convert_netx(ann, calib_x, args.normalize, args.percentile)
        snn = snn.with_metadata(source=str(model))
        calib_note = calib_note.replace("reset by subtract", "reset by zero")
    else:
        snn = convert(ann, calib_x, reset=args.reset or "subtract", normalization=args.normalize,
                      percentile=args.percentile, neuron=args.neuron, seed=args.seed).with_metadata(source=str(model))
    resets = sorted({n.reset for n in snn.of_type(ir.FixedLIF)})
    reports = layer_reports(snn)
    check = None
    if not spiking_source and args.check_samples > 0:
        from spikeforge.analysis import check_conversion

        check = check_conversion(snn, ann, calib_x, args.check_timesteps, args.check_samples)
    # a quantized source (a NIR file spikeforge wrote) has no ANN: the file keeps the snn only
    graphio.save(out, snn=snn, **({} if quantized else {"ann": ann}))
    if args.json:
        print(json.dumps({"output": str(out), "reset": resets[0] if len(resets) == 1 else resets,
                          "spiking_source": spiking_source, "target": args.target,
                          "layers": [r._asdict() for r in reports],
                          **({"netx_changes": [c._asdict() for c in changes]} if changes is not None else {}),
                          "check": check.as_dict() if check else None}))
        return 0
    print(f"converted {model} -> {out} ({calib_note}{', netx rules' if changes is not None else ''})")
    if changes is not None:
        from spikeforge.converter.netx_io import describe_changes

        print("\n".join(describe_changes(changes)))
    head = ("layer", "neurons", "synapses", "weight_exp", "vth", "bias_exp", "clipped_w", "zeroed_w", "sat_bias", "max|a|")
    label = _labeler(snn, ann)
    rows = [(label(r.layer), r.neurons, r.synapses, ",".join(map(str, r.weight_exp)), r.vth, r.bias_exp,
             r.clipped_weights, r.zeroed_weights, r.saturated_biases, r.max_input) for r in reports]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    for r in reports:
        if r.may_wrap:
            print(f"warning: layer '{label(r.layer)}': worst-case input {r.max_input} << 6 can wrap the 24-bit current u")
        if r.clipped_weights or r.saturated_biases:
            print(f"warning: layer '{label(r.layer)}': {r.clipped_weights} weights and {r.saturated_biases} biases saturated")
    if check is not None:
        print(f"check on {check.samples} calibration samples (cpu, T={check.timesteps}): top-1 agreement with "
              f"the ANN {100 * check.agreement:.1f}%; rate correlation per layer: "
              + ", ".join(f"{label(r.layer)} {r.correlation:.3f}" for r in check.layers))
        for w in check.warnings:
            print(f"warning: {w}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spikeforge.converter.nir_io import save_nir

    if args.to == "netx" or (args.to is None and Path(args.output).suffix.lower() == ".net"):
        from spikeforge.converter.netx_io import export_netx

        out = _new_output(args.output, ".net", args.force)
        snn, _ = _graphs(args.graph)
        with _naming(args.graph):
            names = export_netx(snn, out)
        print(f"wrote {out} (lava-dl netx HDF5, {len(names)} layers: {', '.join(names)}; "
              f"load with netx.hdf5.Network(net_config, input_message_bits=8))")
        return 0
    out = _new_output(args.output, ".nir", args.force)
    if not args.dt > 0:
        raise SpikeforgeError(f"--dt: expected a step length > 0 seconds, found {args.dt}")
    snn, _ = _graphs(args.graph)
    save_nir(snn, out, args.dt, args.target)
    dt = 1e-4 if args.target == "snntorch" else args.dt
    print(f"wrote {out} (NIR for {args.target}, one step = {dt} s, recorded in the file)")
    return 0


# -- simulate / verify --------------------------------------------------------------------------
def _graphs(path: str) -> tuple["ir.Graph", "ir.Graph | None"]:
    from spikeforge import graphio

    graphs = graphio.load_all(path)
    if "snn" not in graphs:
        raise SpikeforgeError(f"{path}: expected a graph named 'snn', found {sorted(graphs) or 'none'}")
    return graphs["snn"], graphs.get("ann")


def _features(ds: "Dataset", n_in: int, spec: str) -> np.ndarray:
    """Samples as (n, features), refused in one line if their size does not fit the network."""
    x = ds.x.reshape(len(ds.x), -1)
    if x.shape[1] != n_in:
        raise SpikeforgeError(f"{spec}: expected {n_in} features per sample for this network, found {x.shape[1]}")
    return x


def _labels(ds: "Dataset", n_out: int, spec: str) -> np.ndarray:
    if len(ds.y) and (ds.y.min() < 0 or ds.y.max() >= n_out):
        raise SpikeforgeError(f"{spec}: expected labels in [0, {n_out - 1}] for this network's {n_out} outputs, "
                              f"found [{ds.y.min()}, {ds.y.max()}]")
    return ds.y


def _samples(snn: "ir.Graph", spec: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rates (n, features), or recorded spike trains (n, T, inputs), and labels."""
    ds = _load_data(spec, limit)
    x = _features(ds, snn.inputs[0].out_size, spec)
    return (x if ds.spikes is None else ds.spikes), _labels(ds, snn.output.out_size, spec)


def _timesteps(args: argparse.Namespace, x: np.ndarray) -> int:
    """--timesteps, or for recorded spike trains their length when not given."""
    if args.timesteps is None:
        args.timesteps = x.shape[1] if x.ndim == 3 else 32
    return args.timesteps


def _ann_accuracy(ann: "ir.Graph | None", x: np.ndarray, y: np.ndarray, chunk: int = 8192) -> float | None:
    """The source ANN's accuracy, evaluated in chunks of samples (bounded memory)."""
    if ann is None:
        return None
    from spikeforge.converter.ann import predict

    x = x.reshape(len(x), -1)
    right = sum(int((predict(ann, x[i:i + chunk]) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return right / len(x) if len(x) else float("nan")


def cmd_simulate(args: argparse.Namespace) -> int:
    from spikeforge.runner import simulate

    _device_backend(args)
    snn, ann = _graphs(args.graph)
    x, y = _samples(snn, args.data, args.limit)
    with _naming(args.graph):
        options = {"device": args.device} if args.device != "cpu" else {}
        sim = simulate(snn, args.backend, x, _timesteps(args, x), args.encoding, args.seed,
                       record="readout", memory_mb=args.memory_mb, **options)
    acc = float((sim.predictions == y).mean())
    ann_acc = _ann_accuracy(ann, x if x.ndim == 2 else x.mean(axis=1), y)
    rates = sim.firing_rates
    if args.json:
        print(json.dumps({"backend": args.backend, "accuracy": acc, "ann_accuracy": ann_acc,
                          "samples": int(len(y)), "timesteps": args.timesteps, "steps": sim.steps,
                          "encoding": args.encoding, "seconds": sim.seconds, "firing_rates": rates}))
        return 0
    print(f"{args.backend}: accuracy {100 * acc:.2f}% on {len(y)} samples, T={args.timesteps} "
          f"({sim.steps} steps, {args.encoding if x.ndim == 2 else 'recorded spike'} input), {sim.seconds:.2f} s "
          f"({len(y) / sim.seconds:.1f} samples/s)")
    if ann_acc is not None:
        print(f"ANN accuracy (source model): {100 * ann_acc:.2f}%  (difference {100 * (acc - ann_acc):+.2f} points)")
    label = _labeler(snn, ann)
    print("firing rate per layer: " + ", ".join(f"{label(k)} {v:.3f}" for k, v in rates.items()))
    return 0


def _device_backend(args: argparse.Namespace) -> None:
    if args.device != "cpu" and args.backend != "cpu":
        raise SpikeforgeError(f"--device {args.device}: only the cpu backend runs on a torch device, found --backend {args.backend}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from spikeforge import sweep

    def ints(text: str, what: str) -> list[int]:
        try:
            return [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise SpikeforgeError(f"{what}: expected comma-separated integers, found {text!r}") from None

    _device_backend(args)
    timesteps = ints(args.timesteps, "--timesteps")
    encodings = [e.strip() for e in args.encoding.split(",") if e.strip()]
    sweep.plan(timesteps, encodings, 0, args.shard_size)  # the arguments, before the data is read
    for path in sweep.outputs(args.output):  # sweep.json, .csv and .png: none replaced unasked
        _new_output(path, None, args.force)
    sweep.check(args.backend, args.device, args.ray)
    snn, ann = _graphs(args.graph)
    x, y = _samples(snn, args.data, args.limit)
    with _naming(args.graph):
        res = sweep.sweep(args.graph, x, y, timesteps, encodings, args.backend, args.device, args.workers,
                          args.ray, args.shard_size, args.seed, ann)
    paths = sweep.write(res, args.output, {"graph": args.graph, "data": args.data, "backend": args.backend,
                                          "samples": int(len(y)), "shard_size": args.shard_size})
    for f in res.failures:
        print(f"spikeforge: error: task T={f['timesteps']} {f['encoding']} shard {f['shard']} "
              f"(samples {f['start']}..{f['stop'] - 1}) failed: {f['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"table": res.table(), "ann_accuracy": res.ann_accuracy, "failures": res.failures,
                          "runner": res.runner, "seconds": res.seconds, "files": [str(p) for p in paths]}))
    else:
        print(f"{len(y)} samples, {res.runner}, {res.seconds:.2f} s" +
              (f"; ANN accuracy {100 * res.ann_accuracy:.2f}%" if res.ann_accuracy is not None else ""))
        for r in res.rows:
            acc = "failed" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            print(f"  T={r.timesteps:<5} {r.encoding:<8} {acc}")
        print("wrote " + ", ".join(map(str, paths)))
    return 1 if res.failures else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from spikeforge.runner import verify

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    if len(set(names)) != len(names):
        raise SpikeforgeError(f"--backends: expected different backends, found {','.join(names)}")
    snn, ann = _graphs(args.graph)
    x, y = _samples(snn, args.data, args.limit)
    with _naming(args.graph):
        sims, comps = verify(snn, names, x, _timesteps(args, x), args.encoding, args.seed,
                             memory_mb=args.memory_mb)
    ok = all(c.mismatched_spikes == 0 and c.mismatched_v_final == 0 for c in comps.values())
    if args.json:
        print(json.dumps({
            "reference": names[0], "samples": int(len(y)), "timesteps": args.timesteps,
            "reference_spikes": next(iter(comps.values())).reference_spikes,
            "backends": {b: {"spikes": c.spikes, "mismatched_spikes": c.mismatched_spikes,
                             "mismatched_v_final": c.mismatched_v_final,
                             "per_layer": c.per_layer, "seconds": sims[b].seconds,
                             "first_divergence": c.first_divergence._asdict() if c.first_divergence else None}
                         for b, c in comps.items()},
            "equal": ok}))
        return 0 if ok else 1
    ref = sims[names[0]]
    print(f"reference {names[0]}: {next(iter(comps.values())).reference_spikes} spikes, "
          f"{len(y)} samples x {ref.steps} steps, {ref.seconds:.2f} s")
    for b, c in comps.items():
        status = "identical" if c.mismatched_spikes == 0 and c.mismatched_v_final == 0 else "DIFFERENT"
        print(f"{b}: {c.spikes} spikes, {c.mismatched_spikes} mismatching spikes, "
              f"{c.mismatched_v_final} mismatching readout potentials, {sims[b].seconds:.2f} s: {status}")
        if c.first_divergence:
            d = c.first_divergence
            print(f"  first divergence: sample {d.sample}, layer '{_labeler(snn, ann)(d.layer)}', neuron {d.neuron}, step {d.step} "
                  f"({names[0]} {'spiked' if d.reference else 'silent'}, {b} {'spiked' if d.other else 'silent'})")
    return 0 if ok else 1


OTHER_FORMATS = (".pdf", ".svg", ".eps", ".ps", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp",
                 ".html", ".json", ".csv", ".npz", ".sfg", ".nir", ".onnx")
NO_ANN = ("no source ANN stored in the file (convert of an ONNX, torch or ANN .sfg model keeps it; "
          "a graph from a NIR file has none)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from spikeforge.analysis import report

    snn, ann = _graphs(args.graph)
    if ann is None:
        raise SpikeforgeError(f"{args.graph}: {NO_ANN}")
    x, y = _samples(snn, args.data, args.limit)
    if x.ndim == 3:
        raise SpikeforgeError(f"{args.data}: analyze takes rates x; recorded spike trains run with simulate and verify")
    out = Path(args.output)
    if out.suffix.lower() == ".png":
        _new_output(out, ".png", args.force)  # that file
    else:
        if out.exists() and not out.is_dir():
            raise SpikeforgeError(f"-o {out}: expected a folder or a .png file name, found an existing file")
        if out.suffix.lower() in OTHER_FORMATS:  # would become a folder of that name
            raise SpikeforgeError(f"-o {out}: expected a folder or a .png file name, found a '{out.suffix}' "
                                  f"file name (analyze writes PNG)")
        _new_output(out / "analysis.png", None, args.force) if out.is_dir() else check_output(out)  # a folder
    res = report(snn, ann, x, y, args.timesteps, out, encoding=args.encoding, seed=args.seed)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{len(y)} samples: ANN accuracy {100 * res['ann_accuracy']:.2f}%; SNN accuracy against T: " +
          ", ".join(f"T={t} {100 * a:.2f}%" for t, a in res["accuracy_vs_T"].items()))
    print(f"{'layer':<20} {'ANN rate':>9} {'SNN rate':>9} {'mean|err|':>10} {'r':>7}")
    label = _labeler(snn, ann)
    for r in res["layers"]:
        print(f"{label(r['layer']):<20} {r['ann_rate']:>9.3f} {r['snn_rate']:>9.3f} {r['mean_abs_error']:>10.4f} "
              f"{r['correlation']:>7.3f}")
    print(f"wrote {res['plot']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from spikeforge.report import build

    snn, ann = _graphs(args.graph)
    if ann is None:
        raise SpikeforgeError(f"{args.graph}: {NO_ANN}")
    x, y = _samples(snn, args.data, args.limit)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SpikeforgeError(f"-o {out}: expected a folder, found a file")
    if out.is_dir():
        _new_output(out / "index.html", None, args.force)
    else:
        check_output(out)
    with _naming(args.graph):
        res = build(snn, ann, x, y, args.timesteps, out, args.encoding, args.seed, args.sample, args.graph)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"wrote {out / 'index.html'} and {len(res['images'])} figures: accuracy {100 * res['accuracy']:.2f}% "
          f"(ANN {100 * res['ann_accuracy']:.2f}%) on {res['samples']} samples, T={res['timesteps']}; T99 = {res['t99']}; "
          f"{res['synops_per_inference']:.0f} synaptic ops vs {res['ann_macs_per_inference']} ANN MACs per inference")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from spikeforge.backends.loihi import check_file

    code, text = check_file(args.graph, target=args.target, as_json=args.json)
    print(text)
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    from spikeforge.mapping import estimate, format_table

    snn, _ = _graphs(args.graph)
    est = estimate(snn)
    print(json.dumps({"graph": args.graph, **est.as_json()}) if args.json else
          f"{args.graph}: Loihi 2 mapping estimate\n{format_table(est)}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from spikeforge.deploy import run_cli

    with _naming(args.graph):
        code, out, err = run_cli(args.graph, args.target, args.data, args.timesteps, args.limit, args.json)
    if out:
        print(out)
    if err:
        print(f"spikeforge: error: {err}", file=sys.stderr)
    return code


def cmd_hardware(args: argparse.Namespace) -> int:
    from spikeforge.backends.loihi import hardware_status

    status = hardware_status()
    print(json.dumps(status) if args.json else
          "\n".join(f"{k}: {v}" for k, v in status.items() if v not in ("", None)))
    return 0


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``prog: error: ...``, exit 2); ``-h`` shows the usage."""

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="spikeforge",
        description="Trained rate ANN -> quantized spiking IF/LIF graph (Loihi 2 fixed point), "
                    "run spike for spike on cpu, Brian2 and Lava; see README.md and docs/semantics.md.")
    p.add_argument("--version", action="version", version=f"spikeforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a rate (clipped-ReLU) network and export it to ONNX")
    t.add_argument("--arch", choices=("mlp", "cnn", "recurrent"), default="mlp",
                   help="mlp: feedforward, written as ONNX; cnn: Conv-BN-ReLU-AvgPool-Conv-ReLU-Flatten-"
                        "Linear, written as ONNX; recurrent: layer recurrence and feedback, "
                        "written as a spikeforge ANN graph (.sfg)")
    t.add_argument("--iterations", type=_positive, default=12,
                   help="recurrent: iterations K of the rate model (output averaged over them)")
    t.add_argument("--no-feedback", action="store_true", help="recurrent: no feedback from the next layer")
    t.add_argument("--data", default="digits", help="'digits' (embedded), a .npz with x and y, or an MNIST idx folder")
    t.add_argument("--hidden", type=_positive, nargs="+", default=None,
                   help="hidden widths (mlp, recurrent; default 128) or conv channels (cnn; default 16 32)")
    t.add_argument("--epochs", type=_positive, default=None)
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--calib-out", help="calibration split (default: calib.npz beside the model)")
    t.add_argument("--test-out", help="test split (default: test.npz beside the model)")
    t.add_argument("--split", choices=("official", "random"), default="official",
                   help="an MNIST idx folder: 'official' keeps its split (t10k is the test set, calibration "
                        "from the train part), 'random' splits all samples 70/10/20%% like other data")
    t.add_argument("--force", action="store_true",
                   help="replace an existing model file, and calibration/test files that hold other data")
    t.add_argument("-o", "--output", required=True)
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("convert", help="ANN (ONNX or an ANN graph file) or spiking NIR graph -> quantized spiking graph file")
    c.add_argument("model")
    c.add_argument("--calib", help="calibration data (.npz with x and y, or 'digits'); required for ANNs")
    c.add_argument("--reset", choices=("subtract", "zero"), default=ANN_OPTIONS["reset"], help="default: subtract (netx: zero)")
    c.add_argument("--target", choices=("spikeforge", "netx"), default=ANN_OPTIONS["target"],
                   help="quantization rules: spikeforge's (per-projection weight exponents) or lava-dl "
                        "netx's (weight exponent 0, bias a multiple of 64, reset to zero)")
    c.add_argument("--normalize", choices=("percentile", "max", "none"), default=ANN_OPTIONS["normalize"])
    c.add_argument("--percentile", type=float, default=ANN_OPTIONS["percentile"])
    c.add_argument("--neuron", choices=("if", "stochastic"), default=ANN_OPTIONS["neuron"],
                   help="hidden neurons: integrate-and-fire, or stochastic (fire with probability clip(I, 0, 1))")
    c.add_argument("--seed", type=_seed, default=0, help="stochastic neurons' random streams")
    c.add_argument("--dt", default=None,
                   help="NIR input without a recorded time step: seconds per step, or a producer's convention: "
                        "snntorch (1e-4), norse (LIF dt**2 = 1e-6, IAF 1; norse:DT for another Norse dt), sinabs (1)")
    c.add_argument("--check-samples", type=_count, default=256,
                   help="calibration samples the converted network is checked on against the ANN (0: no check)")
    c.add_argument("--check-timesteps", type=_steps, default=32, help="T of that check (cpu backend)")
    c.add_argument("--json", action="store_true")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--force", action="store_true", help="replace an existing output file")
    c.set_defaults(fn=cmd_convert)

    e = sub.add_parser("export", help="write a graph file's spiking network to NIR or lava-dl netx HDF5")
    e.add_argument("graph")
    e.add_argument("--to", choices=("nir", "netx"), default=None,
                   help="nir (.nir) or netx (lava-dl's HDF5, .net); default: from the output's suffix")
    e.add_argument("--dt", type=float, default=1.0, help="seconds per simulation step (recorded in the file)")
    e.add_argument("--target", choices=("nir", "snntorch", "sinabs"), default="nir",
                   help="nir: IF as NIR's IF (Norse); snntorch: IF as LIF with beta = 1 at dt = 1e-4 s, "
                        "which snnTorch's import_from_nir runs as IF; sinabs: IF layers with reset by "
                        "subtraction (Sinabs' IAF), thresholds for its v >= threshold, no v_reset (nir <= 1.0.4)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--force", action="store_true", help="replace an existing output file")
    e.set_defaults(fn=cmd_export)

    for name, fn, helptext in (("simulate", cmd_simulate, "run a graph file on one backend"),
                               ("verify", cmd_verify, "compare backends spike for spike")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("graph")
        if name == "simulate":
            s.add_argument("--backend", default="cpu")
            s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu backend: torch device")
        else:
            s.add_argument("--backends", default="cpu,lava,brian2")
        s.add_argument("--data", required=True)
        s.add_argument("--timesteps", type=_steps, default=None,
                       help="input steps T (default 32; for recorded spikes, their length)")
        s.add_argument("--limit", type=_positive, default=None)
        s.add_argument("--encoding", choices=("current", "rate"), default="current")
        s.add_argument("--seed", type=_seed, default=0)
        s.add_argument("--memory-mb", type=_positive, default=MEMORY_MB,
                       help=f"memory budget of the samples run at once, MiB (default {MEMORY_MB})")
        s.add_argument("--json", action="store_true")
        s.set_defaults(fn=fn)

    w = sub.add_parser("sweep", help="accuracy over T (and encodings) in parallel: local workers or a Ray cluster")
    w.add_argument("graph")
    w.add_argument("--data", required=True)
    w.add_argument("--timesteps", default="4,8,16,32,64", help="comma-separated T values")
    w.add_argument("--encoding", default="current", help="comma-separated: current,rate")
    w.add_argument("--backend", default="cpu")
    w.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    w.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="local worker processes (1: serial)")
    w.add_argument("--ray", metavar="ADDRESS", help="run the tasks on the Ray cluster at ADDRESS ('auto': the running one)")
    w.add_argument("--shard-size", type=_positive, default=256, help="samples per task")
    w.add_argument("--limit", type=_positive, default=None)
    w.add_argument("--seed", type=_seed, default=0)
    w.add_argument("--json", action="store_true")
    w.add_argument("-o", "--output", default="sweep.json", help="the JSON table; .csv and .png beside it")
    w.add_argument("--force", action="store_true", help="replace the JSON, CSV and PNG already there")
    w.set_defaults(fn=cmd_sweep)

    a = sub.add_parser("analyze", help="per-layer ANN vs SNN rates, accuracy against T, raster (PNG)")
    a.add_argument("graph")
    a.add_argument("--data", required=True)
    a.add_argument("--timesteps", type=_steps, default=32)
    a.add_argument("--limit", type=_positive, default=200, help="samples analysed (default 200)")
    a.add_argument("--encoding", choices=("current", "rate"), default="current")
    a.add_argument("--seed", type=_seed, default=0)
    a.add_argument("--json", action="store_true")
    a.add_argument("-o", "--output", required=True,
                   help="a .png file, or a folder for analysis.png (created in an existing folder)")
    a.add_argument("--force", action="store_true", help="replace the outputs already there")
    a.set_defaults(fn=cmd_analyze)

    r = sub.add_parser("report", help="PNG figures and index.html: rasters, membrane traces, ANN vs SNN, "
                                      "accuracy vs T, synaptic ops and an energy estimate")
    r.add_argument("graph")
    r.add_argument("--data", required=True)
    r.add_argument("--timesteps", type=_positive, default=32)
    r.add_argument("--limit", type=_positive, default=200, help="samples (default 200)")
    r.add_argument("--encoding", choices=("current", "rate"), default="current")
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument("--sample", type=int, default=0, help="the sample shown in the raster and traces")
    r.add_argument("--json", action="store_true")
    r.add_argument("-o", "--output", required=True, help="folder for index.html and the PNGs (created in an existing folder)")
    r.add_argument("--force", action="store_true", help="replace the outputs already there")
    r.set_defaults(fn=cmd_report)

    k = sub.add_parser("check", help="does a graph fit a chip? lists every violation (exit 1 if any)")
    k.add_argument("graph")
    k.add_argument("--target", choices=("loihi2",), default="loihi2")
    k.add_argument("--json", action="store_true")
    k.set_defaults(fn=cmd_check)

    i = sub.add_parser("inspect", help="per layer: neurons, synapses, fan-in/out, weight bits; Loihi 2 cores and chips")
    i.add_argument("graph")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    d = sub.add_parser("deploy", help="run on Loihi 2 (loihi2) or its bit-accurate simulation (lava-sim), "
                                      "after checking the fit")
    d.add_argument("graph")
    d.add_argument("--target", choices=("loihi2", "lava-sim"), required=True)
    d.add_argument("--data", default="digits")
    d.add_argument("--timesteps", type=_positive, default=32)
    d.add_argument("--limit", type=_positive, default=50, help="samples run (default 50)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_deploy)

    h = sub.add_parser("hardware", help="is Loihi 2 hardware (lava-loihi and a board) available?")
    h.add_argument("--json", action="store_true")
    h.set_defaults(fn=cmd_hardware)
    return p


@contextlib.contextmanager
def _naming(graph_path: str) -> Iterator[None]:
    """Prefix the graph file's name to errors about its nodes (raised while compiling)."""
    try:
        yield
    except SpikeforgeError as exc:
        if graph_path in str(exc):
            raise
        raise type(exc)(f"{graph_path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from spikeforge import interrupts, progress

    parser = build_parser()
    args = parser.parse_args(argv)
    progress.enable(progress.wanted(getattr(args, "json", False)))
    # SIGINT and SIGTERM: one Interrupted, whose cleanup later signals never cut short
    with interrupts.installed():
        try:
            return _run(args)
        finally:
            progress.enable(False)


def _run(args: argparse.Namespace) -> int:
    """Run the command; every failure as one line and its exit code."""
    from spikeforge import interrupts

    try:
        code = args.fn(args)
        if interrupts.received() is not None:  # caught somewhere below: still no result
            raise interrupts.Interrupted(interrupts.received() or signal.SIGINT)
        return code
    except interrupts.Interrupted as exc:
        print(f"spikeforge: interrupted ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return exc.exit_code
    except SpikeforgeError as exc:
        print(f"spikeforge: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `spikeforge ... | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else f"{args.command}: "
        print(f"spikeforge: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"spikeforge: error: {args.command}: out of memory (expected a run that fits this machine; "
              f"try a smaller --limit or --timesteps)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
