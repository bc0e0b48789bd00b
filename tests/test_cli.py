"""The command line end to end: train -> convert -> simulate -> verify, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spikeforge.cli import main
from spikeforge.testing import run_cli

CLI = [sys.executable, "-m", "spikeforge.cli"]



@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    r = run_cli("train", "--arch", "mlp", "--hidden", "64", "--epochs", "40", "-o", "model.onnx", cwd=d)
    assert r.returncode == 0, r.stderr
    assert (d / "model.onnx").is_file() and (d / "calib.npz").is_file() and (d / "test.npz").is_file()
    return d


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_convert_simulate_verify(workdir, reset):
    out = f"net-{reset}.sfg"
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", reset, "-o", out, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "weight_exp" in r.stdout and "clipped_w" in r.stdout
    r = run_cli("simulate", out, "--backend", "cpu", "--data", "test.npz", "--timesteps", "32", "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    sim = json.loads(r.stdout)
    assert {"backend", "accuracy", "samples", "timesteps", "seconds"} <= set(sim)
    assert sim["samples"] == 359 and sim["timesteps"] == 32
    tolerance = 0.01 if reset == "subtract" else 0.03
    assert sim["accuracy"] >= sim["ann_accuracy"] - tolerance, sim
    r = run_cli("verify", out, "--backends", "cpu,lava,brian2", "--data", "test.npz", "--timesteps", "32",
                "--limit", "20", "--json", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    ver = json.loads(r.stdout)
    assert ver["reference"] == "cpu"
    for b in ("lava", "brian2"):
        assert ver["backends"][b]["mismatched_spikes"] == 0
        assert ver["backends"][b]["spikes"] > 0
        assert ver["backends"][b]["first_divergence"] is None


def test_simulate_on_lava_text_output(workdir):
    run_cli("convert", "model.onnx", "--calib", "calib.npz", "-o", "net.sfg", cwd=workdir)
    r = run_cli("simulate", "net.sfg", "--backend", "lava", "--data", "test.npz", "--limit", "5", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lava: accuracy") and "ANN accuracy" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["simulate", "missing.sfg", "--data", "test.npz"], "missing.sfg: no such file"),
    (["simulate", "model.onnx", "--data", "test.npz"], "model.onnx: not a spikeforge graph file"),
    (["simulate", "net.sfg", "--data", "model.onnx"], "model.onnx"),
    (["simulate", "net.sfg", "--data", "test.npz", "--backend", "gpu"], "backend: expected one of cpu"),
    (["convert", "calib.npz", "--calib", "calib.npz", "-o", "x.sfg"], "calib.npz: expected a model file ending in .onnx, .sfg"),
    (["convert", "model.onnx", "--calib", "calib.npz", "--percentile", "0", "-o", "x.sfg"], "percentile: expected a value in (0, 100]"),
    (["convert", "model.onnx", "--calib", "calib.npz", "--normalize", "none", "--percentile", "50", "-o", "x.sfg"],
     "--percentile 50.0: applies to --normalize percentile, found --normalize none"),
    (["verify", "net.sfg", "--backends", "cpu", "--data", "test.npz"], "backends: expected at least two"),
    (["verify", "net.sfg", "--backends", "cpu,cpu", "--data", "test.npz"], "--backends: expected different backends"),
    (["simulate", "net.sfg", "--data", "bigy.npz"], "bigy.npz: expected labels in [0, 9]"),
    (["simulate", "net.sfg", "--data", "feat.npz"], "feat.npz: expected 64 features per sample for this network, found 60"),
    (["convert", "model.onnx", "--calib", "calib.npz", "-o", "x.onnx"], "x.onnx: expected an output file name ending in .sfg"),
    (["convert", "model.onnx", "-o", "x.sfg"], "--calib: required to normalize the ANN"),
    (["export", "net.sfg", "-o", "nodir/x.nir"], "nodir/x.nir: expected an existing folder nodir"),
    (["export", "net.sfg", "-o", "."], ".: expected a file name ending in .nir, found a folder"),
    (["inspect", "adir.sfg"], "adir.sfg: a folder (expected a spikeforge graph file)"),
    (["analyze", "net.sfg", "--data", "test.npz", "-o", "rep.pdf"], "-o rep.pdf: expected a folder or a .png file name, found a '.pdf'"),
    (["convert", "adir.onnx", "--calib", "calib.npz", "-o", "x.sfg"], "adir.onnx: a folder (expected an ONNX model)"),
    (["simulate", "net.sfg", "--backend", "loihi", "--data", "test.npz"], "net.sfg: graph does not fit Loihi 2"),
])
def test_errors_are_one_line_and_nonzero(workdir, capsys, args, message):
    import numpy as np

    np.savez(workdir / "bigy.npz", x=np.full((4, 64), 0.5), y=np.arange(10, 14))
    np.savez(workdir / "feat.npz", x=np.full((4, 60), 0.5), y=np.arange(4))
    for folder in ("adir.sfg", "adir.onnx"):
        (workdir / folder).mkdir(exist_ok=True)
    if not (workdir / "net.sfg").exists():
        assert main(["convert", str(workdir / "model.onnx"), "--calib", str(workdir / "calib.npz"),
                     "-o", str(workdir / "net.sfg")]) == 0
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        code = main(args)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not (workdir / "x.sfg").exists()


def test_usage_errors_are_one_line(workdir):
    r = run_cli("simulate", "net.sfg", "--data", "test.npz", "--timesteps", "0", cwd=workdir)
    assert r.returncode == 2 and "--timesteps: expected an integer >= 1, found 0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("simulate", "net.sfg", "--data", "test.npz", "--seed", "-1", cwd=workdir)
    assert r.returncode == 2 and "--seed: expected an integer in [0, 4294967295], found -1" in r.stderr


def test_unsupported_onnx_op_via_cli(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
         helper.make_node("Sigmoid", ["h"], ["y"], name="squash")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.ones((3, 4), np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 4)), y=np.zeros(3, int))
    r = run_cli("convert", "m.onnx", "--calib", "c.npz", "-o", "m.sfg", cwd=tmp_path)
    assert r.returncode == 2
    assert "m.onnx: unsupported ops: node 'squash' (Sigmoid)" in r.stderr
    assert not (tmp_path / "m.sfg").exists()


def test_recurrent_train_convert_verify(tmp_path):
    r = run_cli("train", "--arch", "recurrent", "--hidden", "48", "32", "--epochs", "15", "-o", "rec.sfg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", "rec.sfg", "--calib", "calib.npz", "-o", "net.sfg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("simulate", "net.sfg", "--data", "test.npz", "--timesteps", "32", "--json", cwd=tmp_path)
    sim = json.loads(r.stdout)
    assert sim["accuracy"] >= sim["ann_accuracy"] - 0.02, sim
    r = run_cli("verify", "net.sfg", "--backends", "cpu,lava,brian2", "--data", "test.npz", "--timesteps", "32",
                "--limit", "10", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ver = json.loads(r.stdout)
    for b in ("lava", "brian2"):
        assert ver["backends"][b]["mismatched_spikes"] == 0 and ver["backends"][b]["spikes"] > 0


def test_stochastic_convert_and_verify(workdir):
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--neuron", "stochastic", "-o", "st.sfg", cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = run_cli("verify", "st.sfg", "--backends", "cpu,brian2,lava", "--data", "test.npz", "--timesteps", "16",
                "--limit", "5", "--encoding", "rate", "--json", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    ver = json.loads(r.stdout)
    assert ver["backends"]["brian2"]["mismatched_spikes"] == 0
    assert ver["backends"]["lava"]["mismatched_spikes"] == 0


def test_check_lists_loihi2_violations(workdir):
    run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", "zero", "-o", "zero.sfg", cwd=workdir)
    r = run_cli("check", "zero.sfg", cwd=workdir)
    assert r.returncode == 0 and "fits loihi2" in r.stdout
    run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", "subtract", "-o", "sub.sfg", cwd=workdir)
    r = run_cli("check", "sub.sfg", cwd=workdir)
    assert r.returncode == 1 and "reset='subtract'" in r.stdout and "'readout'" in r.stdout
    assert "hint: 'spikeforge convert model.onnx --calib CALIB.npz --reset zero -o NET.sfg' makes it fit" in r.stdout
    r = run_cli("check", "sub.sfg", "--json", cwd=workdir)
    assert "--reset zero -o NET.sfg' makes it fit" in json.loads(r.stdout)["hint"]
    r = run_cli("simulate", "zero.sfg", "--backend", "loihi", "--data", "test.npz", cwd=workdir)
    assert r.returncode == 2 and "lava-loihi" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_analyze_writes_plot_and_numbers(workdir):
    run_cli("convert", "model.onnx", "--calib", "calib.npz", "-o", "an.sfg", cwd=workdir)
    r = run_cli("analyze", "an.sfg", "--data", "test.npz", "--limit", "60", "-o", "report", "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (workdir / "report" / "analysis.png").stat().st_size > 10_000
    hidden, readout = res["layers"]  # the readout's correlation is shown too
    assert hidden["correlation"] > 0.95 and hidden["mean_abs_error"] < 0.05
    assert readout["layer"] == "readout" and readout["correlation"] > 0.8
    assert res["accuracy_vs_T"]["32"] >= res["ann_accuracy"] - 0.05
    # -o NAME.png writes that file, not a folder of that name
    r = run_cli("analyze", "an.sfg", "--data", "test.npz", "--limit", "20", "-o", "report.png", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert (workdir / "report.png").is_file() and (workdir / "report.png").stat().st_size > 10_000
    assert "readout" in r.stdout and "wrote report.png" in r.stdout


def test_version():
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "spikeforge 0.1.0"


def test_train_refuses_to_overwrite_data(tmp_path):
    """A user's 450-sample test.npz became 359 samples; --test-out equal to --data replaced the input."""
    import numpy as np

    rng = np.random.default_rng(0)
    mine = {"x": rng.random((450, 64)).astype(np.float32), "y": rng.integers(0, 10, 450)}
    np.savez(tmp_path / "test.npz", **mine)
    before = (tmp_path / "test.npz").read_bytes()
    r = run_cli("train", "--epochs", "1", "--hidden", "16", "-o", "model.onnx", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "test.npz: expected a new file for the test split" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "test.npz").read_bytes() == before
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "calib.npz").exists()
    r = run_cli("train", "--data", "test.npz", "--epochs", "1", "--hidden", "16", "--test-out", "test.npz",
                "--calib-out", "c.npz", "-o", "model.onnx", "--force", cwd=tmp_path)
    assert r.returncode == 2 and "test.npz: expected a new file for the test split, found the --data input" in r.stderr
    assert (tmp_path / "test.npz").read_bytes() == before
    # --force overwrites; the same split again (same data and seed) needs no --force
    r = run_cli("train", "--epochs", "1", "--hidden", "16", "-o", "model.onnx", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--epochs", "1", "--hidden", "16", "-o", "model2.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_numeric_layer_names_show_their_op(tmp_path):
    """A torch Sequential's layers are called '1', '3': the tables say '1 (Relu)'."""
    import numpy as np
    import torch

    from spikeforge import graphio
    from spikeforge.converter.torch_import import from_torch

    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    graphio.save(tmp_path / "seq.sfg", ann=from_torch(seq, (8,), exporter="torchscript"))  # names "0", "1", "2"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.random((40, 8)), y=rng.integers(0, 4, 40))
    r = run_cli("convert", "seq.sfg", "--calib", "c.npz", "-o", "net.sfg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\n1 (Relu) " in r.stdout and "readout " in r.stdout
    r = run_cli("simulate", "net.sfg", "--data", "c.npz", cwd=tmp_path)
    assert r.returncode == 0 and "1 (Relu) " in r.stdout, r.stderr


def test_progress_bar_on_a_terminal_only(workdir):
    import fcntl
    import pty
    import struct
    import termios
    import threading

    run_cli("convert", "model.onnx", "--calib", "calib.npz", "-o", "net.sfg", cwd=workdir)
    args = ["simulate", "net.sfg", "--backend", "brian2", "--data", "test.npz", "--limit", "30"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([*CLI, *args], cwd=workdir, stdout=subprocess.PIPE, stderr=slave, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:  # concurrently: a full terminal buffer would block the CLI
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the CLI has closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(10)
    os.close(master)
    err = b"".join(chunks)
    assert proc.returncode == 0 and out.startswith("brian2: accuracy")
    assert b"brian2" in err and b"30/30" in err and b"sample" in err, err  # the bar, on the terminal
    quiet = run_cli(*args, cwd=workdir)  # no terminal: no bar
    assert quiet.returncode == 0 and quiet.stderr == ""
    r = run_cli(*args, "--json", cwd=workdir)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["samples"] == 30


def test_recorded_spike_input_simulates_and_verifies_everywhere(workdir):
    """A .npz of recorded binary input spikes (samples, T, inputs) and labels runs as binary
    input spikes on cpu, lava and brian2, spike for spike."""
    import numpy as np

    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", "zero", "-o", "net-spk.sfg", cwd=workdir)
    assert r.returncode == 0, r.stderr
    test = np.load(workdir / "test.npz")
    rng = np.random.default_rng(0)
    x = test["x"][:6].reshape(6, 1, -1)
    spikes = rng.random((6, 16, x.shape[2])) < x  # Bernoulli spike trains of the pixel rates
    np.savez(workdir / "spikes.npz", spikes=spikes, y=test["y"][:6])
    r = run_cli("simulate", "net-spk.sfg", "--data", "spikes.npz", "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["timesteps"] == 16
    r = run_cli("verify", "net-spk.sfg", "--backends", "cpu,lava,brian2", "--data", "spikes.npz", "--json",
                cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    ver = json.loads(r.stdout)
    assert ver["reference_spikes"] > 0
    for b in ("lava", "brian2"):
        assert ver["backends"][b]["mismatched_spikes"] == 0 and ver["backends"][b]["spikes"] == ver["reference_spikes"]


def test_existing_outputs_are_replaced_only_when_asked(tmp_path, copy_demo):
    """Every -o replaced a user's file silently (only train's data splits were protected)."""
    d = copy_demo(tmp_path)
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--check-samples", "0", "-o", "net.sfg", cwd=d)
    assert r.returncode == 0, r.stderr
    runs = {"m.onnx": ["train", "--epochs", "1", "-o", "m.onnx"],
            "c.sfg": ["convert", "model.onnx", "--calib", "calib.npz", "-o", "c.sfg"],
            "n.nir": ["export", "net.sfg", "-o", "n.nir"],
            "n.net": ["export", "net.sfg", "--to", "netx", "-o", "n.net"],
            "a.png": ["analyze", "net.sfg", "--data", "test.npz", "--limit", "5", "-o", "a.png"],
            "s.csv": ["sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4", "--limit", "5",
                      "--workers", "1", "-o", "s.json"]}  # the CSV beside the JSON counts too
    for name, args in runs.items():
        (d / name).write_text("the user's own file\n")
        r = run_cli(*args, cwd=d)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and f"{name}: expected a new file, found an existing one (pass --force" in err[0], err
        assert (d / name).read_text() == "the user's own file\n"
    assert not (d / "s.json").exists()
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--check-samples", "0", "--force", "-o", "c.sfg", cwd=d)
    assert r.returncode == 0, r.stderr
    assert zipfile.is_zipfile(d / "c.sfg")
