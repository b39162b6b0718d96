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
# drives the benchmark and h2load (nghttp2-client) its HTTP/2 rows; nginx with its Lua module
# and Redis client are the bench's comparison rows (the bench starts its own nginx processes,
# never the system's); chromium runs the browser tests. (deploy/check.sh brings PyYAML itself.)
APT_PACKAGES := cmake build-essential pkg-config redis-server openssl wrk nghttp2-client chromium nginx libnginx-mod-http-lua lua-nginx-redis

.PHONY: help deps build build-release demo test test-unit test-js lint check-conf bench bench-ws bench-login bench-tickets chaos clean

help:
	@echo "make demo    - run the gate with a demo user and echo upstreams"
	@echo "make test    - run every test (unit, integration, config and deploy checks)"
	@echo "make bench   - release benchmark: the gate vs stock Pingora, nginx and nginx+Lua gates"
	@echo "make bench-login - release benchmark: a flood of bad logins vs the public route"
	@echo "make bench-ws - release: 9,000 idle WebSockets, then revocation at scale on two gates"
	@echo "make bench-tickets - release: 1,000,000 distinct tickets against the ticket cache"
	@echo "make chaos   - release: gate kill -9, Redis restart and revokes under load"
	@echo "make lint    - cargo fmt --check, clippy -D warnings and no module import cycles"

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
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
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
	.ci/import-cycles

test-unit: deps
	$(CARGO) test --locked --lib

# nextest schedules every test of every binary in one pool, so slow tests
# overlap the rest; plain cargo test is the fallback.
test: build check-conf
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast --test-threads 8; \
	else \
		$(CARGO) test --locked --no-fail-fast -- --test-threads 8; \
	fi
	$(MAKE) test-js

# The SDK (clients/js): npm ci from the lockfile, build (the tests load the
# package by its name), typecheck, lint, then
# its tests in Node and headless Chromium against the debug binary (about a minute).
test-js: build
	cd clients/js && npm ci --no-audit --no-fund && npm run build && npm run typecheck && npm run lint && npm test

# Only the binaries the bench runs: a release build of every test binary
# with fat LTO would take many minutes.
bench: deps
	$(CARGO) build --release --locked --bin sessiongate --example ws_load --example stock_proxy
	benches/bench.sh
	benches/tls.sh

# 10,000 WebSockets do not fit under this machine's 20,000 open-files cap
# (two sockets per proxied WebSocket in the gate): 9,000 is the largest run.
# Then revocation at scale: 9,000 tunnels over 3,000 sessions on two gates, every user
# revoked at once, then (new sessions) every session left to idle_timeout.
bench-ws: deps
	$(CARGO) build --release --locked --bin sessiongate --example ws_load --example stock_proxy
	benches/bench.sh --ws 9000
	benches/revoke.sh --scenario revoke --sessions 3000 --tunnels 9000
	benches/revoke.sh --scenario idle --sessions 3000 --tunnels 9000

# The verified-ticket cache under 1,000,000 distinct valid tickets: RSS bounded by
# tickets.cache_max_bytes, no latency cliff when eviction starts.
bench-tickets: deps
	$(CARGO) build --release --locked --bin sessiongate --example ticket_flood
	benches/flood.sh

# Two gates, Redis with its AOF, HTTP load and 1,000 WebSockets; a gate killed and restarted,
# Redis restarted, users revoked throughout (about a minute).
chaos: deps
	$(CARGO) build --release --locked --bin sessiongate --example ws_load
	deploy/loadtest/chaos.sh

# 1,000 connections of bad logins against the bounded argon2 pool: the gate's peak RSS and a
# public route's p99 meanwhile.
bench-login: deps
	$(CARGO) build --release --locked --bin sessiongate
	benches/login_flood.sh

clean:
	$(CARGO) clean
