# llava-labeler: `make run` and `make test` are the two commands; everything else is a step they use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Bump INSTALL_VERSION when the install recipe below changes; pyproject.toml changes are seen on their own.
INSTALL_VERSION := 2
DEPS_HASH := $(shell (cat pyproject.toml; echo $(INSTALL_VERSION)) | sha1sum | cut -c1-12)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
# The shipped demo model (a tiny LLaVA-1.5 trained on the shapes world, 4.7 MB); `make demo-model` rebuilds one.
DEMO_MODEL := training/demo_model
DATA := build/shapes
PYTEST_ARGS ?=

.PHONY: install run test bench clean demo-model loop-demo

# Dependencies are installed once per pyproject/Makefile version (torch first: its CPU wheel here,
# a plain requirement would pull a multi-GB CUDA build); the project itself is re-pointed at this
# checkout every time, so a cached environment (VENV=...) can serve several clones.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The original LLaVA code, a test oracle only (prompts, pixels): its own dependencies pin an old torch.
	$(BIN)/python -m pip install -q --no-deps llava-torch==1.2.2.post1
	rm -f $(VENV)/.deps-*
	touch $@

install: $(STAMP)
	@$(BIN)/python -c "import engine, pathlib, sys; sys.exit(pathlib.Path(engine.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" \
		|| $(BIN)/python -m pip install -q --no-deps -e .

# Rebuild the demo model from scratch on the shapes world (about 10 minutes on 2 cores) into build/, and print its
# scores beside the shipped one's.
demo-model: install
	$(BIN)/llava-labeler demo-model --out build/demo-model --force --baseline $(DEMO_MODEL)

# The main job on the embedded default (SQLite database, SQLite broker, the demo model in-process):
# label the shapes world's held-out images as JSON and as captions, score them against the ground
# truth, write the exports. Afterwards `llava-labeler ui` opens the jobs for review.
$(DATA)/eval-json.jsonl: | install
	$(BIN)/llava-labeler data shapes --out $(DATA) --n 1 --n-eval 100 --seed 0

run: install $(DATA)/eval-json.jsonl
	$(BIN)/llava-labeler run $(DATA)/eval-json.jsonl --task json --schema $(DATA)/schema.json \
		--name "shapes: JSON labels" --max-new-tokens 64
	$(BIN)/llava-labeler run $(DATA)/eval-caption.jsonl --task caption --name "shapes: captions" --max-new-tokens 32
	@echo "review the results: $(BIN)/llava-labeler ui   (http://127.0.0.1:8501)"

# The closed loop, measured: a demo model that never saw purple or orange in its image-text data labels
# fresh images, a simulated reviewer corrects them through the service layer, `retrain` finetunes and
# promotes, and held-out accuracy is compared before and after (build/loop-demo/loop_report.md).
WEAK_MODEL := build/weak-model
$(WEAK_MODEL)/config.json: | install
	$(BIN)/llava-labeler demo-model --out $(WEAK_MODEL) --withhold-colour purple --withhold-colour orange

loop-demo: install $(WEAK_MODEL)/config.json
	rm -rf build/loop-demo
	$(BIN)/llava-labeler loop-demo --model $(WEAK_MODEL) --out build/loop-demo --withhold-colour purple --withhold-colour orange

# The console's browser test drives Debian's chromium (Playwright's own browser download fails here).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The real LLaMA/Vicuna tokenizer is rebuilt from the npm package that embeds its vocabulary (no model hub here).
NPM := /usr/bin/npm
$(NPM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
LLAMA_TOKENIZER := build/llama-tokenizer/llama-tokenizer-js-1.2.2.tgz
$(LLAMA_TOKENIZER): | $(NPM)
	mkdir -p $(@D) && npm pack --loglevel=error --pack-destination $(@D) llama-tokenizer-js@1.2.2

test: install $(CHROMIUM) $(LLAMA_TOKENIZER)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache
