# hypervisor: build, test and run. Every target installs what it needs (scripts/install-deps.sh).
SHELL := /bin/bash
NODE_TEST := node --test --test-reporter=spec
TESTS = $(shell find dist -name '*.test.js' -not -path '*/node_modules/*' | sort)
SHORT_TESTS = $(shell find dist -name '*.test.js' -not -path '*/node_modules/*' -not -path 'dist/test/e2e/*' | sort)

.PHONY: all build build-server build-agent build-ctl proto deps test test-short test-coverage lint fmt \
	run run-server run-agent etcd stop-etcd bench clean

all: lint build test

deps:
	@bash scripts/install-deps.sh

node_modules/.package-lock.json: package.json package-lock.json
	@bash scripts/install-deps.sh --node-only

build: node_modules/.package-lock.json
	npx tsc -p tsconfig.json
	npx vite build --logLevel warn

# The three binaries share one compile; these targets exist for parity with the Go layout.
build-server build-agent build-ctl: build

proto: node_modules/.package-lock.json
	npx buf lint
	npx buf generate
	npx buf generate pkg/compute/containerd/proto --template buf.gen.containerd.yaml

test: deps build
	HYPERVISOR_TEST_TIMEOUT=$${HYPERVISOR_TEST_TIMEOUT:-600000} $(NODE_TEST) --test-timeout=600000 $(TESTS)

test-short: deps build
	HYPERVISOR_TEST_SHORT=1 $(NODE_TEST) --test-timeout=300000 $(SHORT_TESTS)

test-coverage: deps build
	npx c8 --reporter=html --reporter=json-summary --reporter=text-summary --reports-dir=coverage --exclude="dist/**/*.test.js" --exclude="dist/test/**" --exclude="dist/api/gen/**" $(NODE_TEST) --test-timeout=600000 $(TESTS)
	node scripts/coverage-html.mjs coverage coverage.html

lint: node_modules/.package-lock.json
	npx eslint .
	npx tsc -p tsconfig.json --noEmit
	npx vue-tsc -p tsconfig.ui.json --noEmit
	npx buf lint

fmt: node_modules/.package-lock.json
	npx prettier --write .

# One machine, one process, no etcd: the embedded store in .data/server, libvirtd started if
# needed, and one demo VM (scripts/run-dev.sh says how to read its console).
run: deps build
	@bash scripts/run-dev.sh

# A server and agents (each `make run-agent` in its own terminal; more than one with
# AGENT_ARGS="--node-name n2 --data-dir .data/n2") on a local etcd on https://127.0.0.1:2379,
# started here if it is not running, as production runs it: TLS and client-certificate auth from
# the cluster CA (`hypervisor-server init` makes it and etcd's certificates in .data/server/pki),
# the server turning etcd's auth on, each agent joined with a token (scripts/run-agent.sh) and
# confined to its own keys. Data in .data/etcd; `make stop-etcd` stops it by its pid file.
run-server: deps build etcd
	node dist/cmd/hypervisor-server/main.js --config configs/server.yaml

run-agent: deps build etcd
	@bash scripts/run-agent.sh $(AGENT_ARGS)

etcd: build
	@node dist/cmd/hypervisor-server/main.js init --config configs/server.yaml >/dev/null
	@bash scripts/start-etcd.sh 2379 $(CURDIR)/.data/etcd $(CURDIR)/.data/server/pki/etcd >/dev/null

stop-etcd:
	@bash scripts/stop-etcd.sh $(CURDIR)/.data/etcd

bench: deps build
	node dist/bench/main.js
	node dist/bench/libvirt.js
	node dist/bench/containerd.js
	node dist/bench/console.js
	node dist/bench/scale.js
	node dist/bench/hostile.js
	node dist/bench/tls.js
	node dist/bench/access.js

clean:
	rm -rf dist coverage coverage.html
