# llava-labeler: `make run` and `make test` are the two commands; everything else is a step they use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Bump INSTALL_VERSION when the install recipe below changes; pyproject.toml changes are seen on their own.
INSTALL_VERSION := 1
DEPS_HASH := $(shell (cat pyproject.toml; echo $(INSTALL_VERSION)) | sha1sum | cut -c1-12)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
TINY_MODEL := build/tiny-model
PYTEST_ARGS ?=

.PHONY: install run test bench clean

# Dependencies are installed once per pyproject/Makefile version (torch first: its CPU wheel here,
# a plain requirement would pull a multi-GB CUDA build); the project itself is re-pointed at this
# checkout every time, so a cached environment (VENV=...) can serve several clones.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.deps-*
	touch $@

install: $(STAMP)
	@$(BIN)/python -c "import engine, pathlib, sys; sys.exit(pathlib.Path(engine.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" \
		|| $(BIN)/python -m pip install -q --no-deps -e .

$(TINY_MODEL)/config.json: | install
	$(BIN)/llava-labeler model init-tiny $(TINY_MODEL)

run: install $(TINY_MODEL)/config.json
	@for image in tests/data/images/*.png; do \
		echo "== $$image"; \
		$(BIN)/llava-labeler predict --model $(TINY_MODEL) --image $$image --max-new-tokens 24 || exit 1; \
		$(BIN)/llava-labeler predict --model $(TINY_MODEL) --image $$image --question "What shapes are there?" \
			--schema tests/data/schemas/shapes.json --max-new-tokens 64 || exit 1; \
	done

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache
