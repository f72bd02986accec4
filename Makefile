# Developer entry points. Plugins (WebAssembly guests) live in their own
# cargo workspace under plugins/ and are built by plugins/build.sh into
# target/plugins/<name>.wasm.

CARGO ?= cargo
# The crash tests' fail points (agent/src/failpoint.rs) are compiled into the
# development build only; release builds (packages) never have them.
DEV_FEATURES ?= --features rollback-agent/failpoints

.PHONY: all build plugins test demo lint bench fuzz clean release assets deb rpm dist

all: build plugins

## Host: the agent and the componentize tool (root workspace). protoc (for
## etcd-client) is installed first when missing (as root; else named).
build:
	tests/install-deps.sh build
	$(CARGO) build --workspace $(DEV_FEATURES)

## Guest plugins -> target/plugins/*.wasm (components).
plugins:
	plugins/build.sh

## All tests: the agent's unit and end-to-end tests (they need the built
## plugins) and the guest plugins' own unit tests (native target).
test: plugins python-example varlink-client
	tests/install-deps.sh test
	$(CARGO) test --workspace $(DEV_FEATURES)
	cd plugins && $(CARGO) test --workspace

## The quickstart (examples/quickstart): deploy a good and a broken release
## of a tiny Python app and watch the automatic rollback. No root needed.
demo: build plugins
	SKIP_BUILD=1 examples/quickstart/demo.sh

## Fuzzing (docs/fuzzing.md): each target of fuzz/ for FUZZ_SECONDS, from
## the seed corpus in fuzz/corpus (new finds go to target/fuzz-corpus).
## cargo fuzz needs compiler options of nightly Rust; RUSTC_BOOTSTRAP lets
## the installed toolchain accept them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= config release_toml archive varlink
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked --version 0.13.2
	for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none $$t target/fuzz-corpus/$$t fuzz/corpus/$$t \
			-- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 || exit 1; \
	done

## Benchmarks (release build): ratios against baselines measured in the same run.
bench: plugins
	tests/install-deps.sh test
	$(CARGO) bench -p rollback-agent --bench hot_paths
	$(CARGO) bench -p rollback-agent --bench agent
	$(CARGO) bench -p rollback-agent --bench fleet

## ---------------------------------------------------------------------------
## Packages (see packaging/README.md). `assets` gathers the release binaries,
## man pages, completions and shipped plugins into target/assets.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH := $(shell uname -m)

release:
	tests/install-deps.sh build
	$(CARGO) build --release -p rollback-agent

assets: release plugins
	packaging/assets.sh

## target/debian/rollback-agent_<version>-1_<arch>.deb (needs cargo-deb).
deb: assets
	$(CARGO) deb -p rollback-agent --no-build

## target/generate-rpm/rollback-agent-<version>-1.<arch>.rpm (needs cargo-generate-rpm).
rpm: assets
	$(CARGO) generate-rpm -p agent

## target/dist/rollback-agent-<version>-<arch>-linux.tar.gz, installed with
## its install.sh.
dist: assets
	rm -rf target/dist/rollback-agent-$(VERSION)
	mkdir -p target/dist/rollback-agent-$(VERSION)
	cp -r target/assets/. target/dist/rollback-agent-$(VERSION)/
	cp -r packaging/install.sh packaging/rollbackd.service packaging/agent.toml \
		packaging/sysusers.d packaging/tmpfiles.d LICENSE target/dist/rollback-agent-$(VERSION)/
	tar -C target/dist -czf target/dist/rollback-agent-$(VERSION)-$(ARCH)-linux.tar.gz rollback-agent-$(VERSION)
	@echo "dist: target/dist/rollback-agent-$(VERSION)-$(ARCH)-linux.tar.gz"

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets $(DEV_FEATURES) -- -D warnings

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
