# The two quick-start commands: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use; nothing is downloaded except packages from PyPI.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CPU machines: this torch is a local CPU build; any other version pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,plots,serve,data,tensorboard,eval]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/zdiff demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
