# spikeforge: `make demo` (the main job on the embedded digits data) and `make test`.
# Both create the Python 3.10 environment in $(VENV) when it is missing and reuse it otherwise.

VENV    ?= .venv
PY      := $(VENV)/bin/python
SF      := $(VENV)/bin/spikeforge
STAMP   := $(VENV)/.spikeforge-installed
OUT     ?= out
T       ?= 32
# lava-dl's netx (the netx export test): lava-dl 0.6.0 pins torch<2.4 and pytest<8, so it and
# torchvision (the build matching torch 2.14) go in without their dependencies; opencv<4.11
# (later builds pull numpy 2) is what slayer's __init__ imports besides them.
NETX_NODEPS := lava-dl==0.6.0 'torchvision>=0.29,<0.30'
NETX_DEPS   := opencv-python-headless==4.10.0.84 'numpy<2'
# Sinabs (the NIR export test): sinabs 3.1.3 pins nir<=1.0.4, but its from_nir runs with nir 1.0.8
# (measured), so it goes in without its dependencies; pbr is what its __init__ imports besides
# torch, numpy, nir and nirtorch (samna is needed for its chip backends only).
SINABS_NODEPS := sinabs==3.1.3
SINABS_DEPS   := 'pbr>=6,<8'

.PHONY: demo test env bench examples clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@set -e; \
	if [ ! -x "$(PY)" ]; then \
	  py=$$(scripts/find-python310.sh); \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv "$(VENV)"; \
	fi; \
	"$(PY)" -c 'import sys; assert sys.version_info[:2] == (3, 10), "$(VENV) is not Python 3.10: remove it and run make again"'; \
	"$(PY)" -m pip install --quiet --upgrade pip; \
	echo "installing spikeforge and its dependencies (lava-nc, brian2, torch, onnx, ...) into $(VENV)"; \
	"$(PY)" -m pip install --quiet --progress-bar off -e '.[test]'; \
	echo "installing lava-dl's netx (lava-dl 0.6.0 pins torch<2.4: --no-deps, plus only what netx imports)"; \
	"$(PY)" -m pip install --quiet --progress-bar off --no-deps $(NETX_NODEPS); \
	"$(PY)" -m pip install --quiet --progress-bar off $(NETX_DEPS); \
	"$(PY)" -c 'from lava.lib.dl import netx; import numpy, torch; assert numpy.__version__ < "2", numpy.__version__' >/dev/null; \
	echo "installing sinabs (it pins nir<=1.0.4: --no-deps, plus pbr)"; \
	"$(PY)" -m pip install --quiet --progress-bar off --no-deps $(SINABS_NODEPS); \
	"$(PY)" -m pip install --quiet --progress-bar off $(SINABS_DEPS); \
	"$(PY)" -c 'from sinabs import from_nir; import nir; assert tuple(map(int, nir.__version__.split(".")[:3])) >= (1, 0, 5), nir.__version__' >/dev/null; \
	touch "$(STAMP)"

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(SF) train --arch mlp --force -o $(OUT)/model.onnx
	$(SF) convert $(OUT)/model.onnx --calib $(OUT)/calib.npz --reset subtract --force -o $(OUT)/net.sfg
	$(SF) convert $(OUT)/model.onnx --calib $(OUT)/calib.npz --reset zero --force -o $(OUT)/net-zero.sfg
	$(SF) simulate $(OUT)/net.sfg --backend cpu --data $(OUT)/test.npz --timesteps $(T)
	$(SF) simulate $(OUT)/net-zero.sfg --backend cpu --data $(OUT)/test.npz --timesteps $(T)
	$(SF) simulate $(OUT)/net.sfg --backend lava --data $(OUT)/test.npz --timesteps $(T) --limit 50
	$(SF) verify $(OUT)/net.sfg --backends cpu,lava,brian2 --data $(OUT)/test.npz --timesteps $(T) --limit 20
	$(SF) verify $(OUT)/net-zero.sfg --backends cpu,lava,brian2 --data $(OUT)/test.npz --timesteps $(T) --limit 20
	$(SF) analyze $(OUT)/net.sfg --data $(OUT)/test.npz --timesteps $(T) --force -o $(OUT)/report
	$(SF) check $(OUT)/net-zero.sfg --target loihi2
	$(SF) inspect $(OUT)/net-zero.sfg
	$(SF) deploy $(OUT)/net-zero.sfg --target lava-sim --data $(OUT)/test.npz --timesteps $(T) --limit 20
	$(SF) deploy $(OUT)/net-zero.sfg --target loihi2 --data $(OUT)/test.npz || echo "(expected here: no Loihi 2 hardware)"
	$(SF) convert $(OUT)/model.onnx --calib $(OUT)/calib.npz --target netx --force -o $(OUT)/net-netx.sfg
	$(SF) export $(OUT)/net-netx.sfg --to netx --force -o $(OUT)/net.net
	$(SF) report $(OUT)/net.sfg --data $(OUT)/test.npz --timesteps $(T) --force -o $(OUT)/html
	$(SF) train --arch recurrent --hidden 96 64 --force -o $(OUT)/recurrent.sfg
	$(SF) convert $(OUT)/recurrent.sfg --calib $(OUT)/calib.npz --force -o $(OUT)/net-recurrent.sfg
	$(SF) simulate $(OUT)/net-recurrent.sfg --backend cpu --data $(OUT)/test.npz --timesteps $(T)
	$(SF) verify $(OUT)/net-recurrent.sfg --backends cpu,lava,brian2 --data $(OUT)/test.npz --timesteps $(T) --limit 10
	$(SF) train --arch cnn --force -o $(OUT)/cnn.onnx --calib-out $(OUT)/calib-cnn.npz --test-out $(OUT)/test-cnn.npz
	$(SF) convert $(OUT)/cnn.onnx --calib $(OUT)/calib-cnn.npz --force -o $(OUT)/net-cnn.sfg
	$(SF) simulate $(OUT)/net-cnn.sfg --backend cpu --data $(OUT)/test-cnn.npz --timesteps $(T)
	$(SF) verify $(OUT)/net-cnn.sfg --backends cpu,lava,brian2 --data $(OUT)/test-cnn.npz --timesteps $(T) --limit 10
	$(SF) hardware

test: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench.py $(BENCH)
	$(PY) benchmarks/gpu.py

examples: $(STAMP)
	for f in relu_convergence stochastic_network robustness recurrent_dynamics voltage_trace sequence_lif; do \
	  $(PY) examples/$$f.py --out examples/out || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache
