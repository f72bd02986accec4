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
test: plugins python-example
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
