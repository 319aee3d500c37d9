# Each target makes its own virtualenv (.venv) and installs the package into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= results/quickstart
BENCH_ARGS ?= --preset cpu

.PHONY: quickstart test bench install clean

install: $(VENV)/.installed

# The quickstart needs only the package; the tests add the `dev` extra (pytest, scikit-image, playwright).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# Train on the built-in synthetic faces with the `cpu` preset, then evaluate the best model. Run again, it continues
# the run in $(RUN) where it stopped (a finished run is only evaluated again); delete $(RUN) for a fresh one.
quickstart: install
	$(PY) train_accelerate.py --preset cpu --output-dir $(RUN) --resume latest
	$(PY) eval_accelerate.py --model $(RUN)/best_model --output-dir $(RUN)/eval

test: $(VENV)/.installed-dev
	WANDB_MODE=disabled $(PY) -m pytest -q

# Throughput table for this machine (docs/benchmarks.md); BENCH_ARGS="--preset b4 --precision bf16" on a GPU.
bench: install
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) results build *.egg-info
