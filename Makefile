# sessiongate — the two commands a newcomer needs:
#   make demo   install what is missing, build, run the one-command tour
#   make test   install what is missing, build, run every test
# Both work from a fresh Debian machine with a Rust toolchain (rustup, Rust >= 1.88).

SHELL := /bin/bash
CARGO ?= cargo
# Root installs directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages: cmake + a C toolchain build Pingora's zlib-ng; redis-server
# (with redis-cli) runs under the tests, openssl makes their throwaway TLS CA; wrk
# drives the benchmark, and nginx with its Lua module and Redis client are the bench's
# comparison rows (the bench starts its own nginx processes, never the system's).
# (deploy/check.sh brings PyYAML itself.)
APT_PACKAGES := cmake build-essential pkg-config redis-server openssl wrk nginx libnginx-mod-http-lua lua-nginx-redis

.PHONY: help deps build build-release demo test test-unit lint check-conf bench bench-ws clean

help:
	@echo "make demo    - run the gate with a demo user and echo upstreams"
	@echo "make test    - run every test (unit, integration, config and deploy checks)"
	@echo "make bench   - release benchmark: the gate vs stock Pingora, nginx and nginx+Lua gates"
	@echo "make lint    - cargo fmt --check and clippy -D warnings"

# Installs only what is missing, so a warm machine pays nothing.
deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"; exit 1; }
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v cc >/dev/null || missing="$$missing build-essential"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing="$$missing libnginx-mod-http-lua"; \
	[ -f /usr/share/lua/5.1/nginx/redis.lua ] || missing="$$missing lua-nginx-redis"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(CARGO) build --locked --all-targets

# The exact command deploy/Dockerfile runs.
build-release: deps
	$(CARGO) build --release --locked

demo: deps
	$(CARGO) run --locked -- demo

# Example configs must pass `check`; the key and token are throwaway values.
check-conf: build
	SESSIONGATE_KEY=$$(target/debug/sessiongate keygen) SESSIONGATE_ADMIN_TOKEN=ci \
		target/debug/sessiongate check -c conf/sessiongate.yaml
	@if [ -x deploy/check.sh ]; then deploy/check.sh target/debug/sessiongate; fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test-unit: deps
	$(CARGO) test --locked --lib

# nextest schedules every test of every binary in one pool, so the long
# WebSocket silence test overlaps the rest; plain cargo test is the fallback.
test: build check-conf
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast --test-threads 8; \
	else \
		$(CARGO) test --locked --no-fail-fast -- --test-threads 8; \
	fi

# Only the binaries the bench runs: a release build of every test binary
# with fat LTO would take many minutes.
bench: deps
	$(CARGO) build --release --locked --bin sessiongate --example ws_load --example stock_proxy
	benches/bench.sh

# 10,000 WebSockets do not fit under this machine's 20,000 open-files cap
# (two sockets per proxied WebSocket in the gate): 9,000 is the largest run.
bench-ws: deps
	$(CARGO) build --release --locked --bin sessiongate --example ws_load --example stock_proxy
	benches/bench.sh --ws 9000

clean:
	$(CARGO) clean
