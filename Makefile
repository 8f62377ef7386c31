# lcnn-lab: two commands for a newcomer.
#   make book   build the HTML book into _build/html/ (executes every notebook at LCNN_BUDGET, default quick)
#   make test   run the whole test suite (unit tests, notebooks at the smoke budget, a book build check)
#   make lab    open the notebooks in JupyterLab
# Both create .venv on first use and install the pinned requirements into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env data book test lab bench browser results clean

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (lcnn-lab)" >/dev/null
	touch $(STAMP)

# Find CIFAR-10 ($$LCNN_DATA, the cache, or download it) and decode it once into the cache.
data: env
	$(BIN)/python -m lcnn_lab data

# LCNN_WIDGETS=static: every Explorer precomputes its grid into a self-contained HTML view,
# so the web book's sliders work without a kernel.
book: env data
	LCNN_BUDGET=$${LCNN_BUDGET:-quick} LCNN_WIDGETS=static \
		$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "Open _build/html/index.html"

test: env data browser
	$(BIN)/python -m pytest

# Headless Chromium and its driver for the browser tests, from Debian's packages (a test tool that
# downloads its own browser does not work offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing Debian's chromium and chromium-driver for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# After a change to the trainer: train every committed entry of results/ again under the current code
# (checkpoints, training grids, recipe fine-tunes; one progress bar), drop what the code no longer
# reads, then build the book, whose notebooks measure the rest. Commit results/ afterwards.
results: env data
	$(BIN)/python -c "from lcnn_lab.trained import remeasure; print(remeasure())"
	$(MAKE) book

lab: env
	$(BIN)/jupyter lab notebooks/

bench: env data
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf _build
