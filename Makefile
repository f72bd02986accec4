# Developer entry points. Plugins (WebAssembly guests) live in their own
# cargo workspace under plugins/ and are built by plugins/build.sh into
# target/plugins/<name>.wasm.

CARGO ?= cargo

.PHONY: all build plugins test demo lint bench clean

all: build plugins

## Host: the agent and the componentize tool (root workspace).
build:
	$(CARGO) build --workspace

## Guest plugins -> target/plugins/*.wasm (components).
plugins:
	plugins/build.sh

## All tests: the agent's unit and end-to-end tests (they need the built
## plugins) and the guest plugins' own unit tests (native target).
test: plugins python-example varlink-client
	$(CARGO) test --workspace
	cd plugins && $(CARGO) test --workspace

## The quickstart (examples/quickstart): deploy a good and a broken release
## of a tiny Python app and watch the automatic rollback. No root needed.
demo: build plugins
	SKIP_BUILD=1 examples/quickstart/demo.sh

## Benchmarks (release build): ratios against baselines measured in the same run.
bench: plugins
	$(CARGO) bench -p rollback-agent --bench hot_paths

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf plugins/target

## ---------------------------------------------------------------------------
## The Python health check example (examples/python-check) ->
## target/plugins/python-check.wasm. Needs python3; installs componentize-py
## into target/python-venv on first use.
.PHONY: python-example
python-example:
	examples/python-check/build.sh

## An independent Varlink client (the `varlink` package from PyPI) for the
## wire-format test, in the same venv as the Python example.
.PHONY: varlink-client
varlink-client: python-example
	target/python-venv/bin/python -c 'import varlink' 2>/dev/null || target/python-venv/bin/pip install --quiet 'varlink==31.0.0'
