# The two commands of the README: `make demo` and `make test`. Each sets up .venv itself.
PROFILE ?= cpu
NOTEBOOKS ?= $(sort $(wildcard notebooks/0*.ipynb))
export FAITHFUL_DATA_DIR ?= $(abspath ../shared/data)
VENV := . .venv/bin/activate &&

.PHONY: setup demo test lab
setup:
	@bash scripts/setup.sh

## Run every notebook at the `cpu` profile, in place: data/, runs/ and results/ fill up.
demo: setup
	$(VENV) FAITHFUL_PROFILE=$(PROFILE) python -m faithful notebooks $(NOTEBOOKS)

## Unit + integration tests, and every notebook under nbval at the `smoke` profile
## (in a scratch FAITHFUL_HOME; the converted model is cached in data/models).
test: setup
	$(VENV) FAITHFUL_PROFILE=smoke FAITHFUL_MODELS_DIR=$(abspath data/models) \
	  FAITHFUL_HOME=$$(mktemp -d) python -m pytest tests notebooks --nbval-lax \
	  --nbval-current-env --nbval-cell-timeout=900 \
	  -p no:cacheprovider $(PYTEST_ARGS)

lab: setup
	$(VENV) jupyter lab notebooks/
