# anet — build, test, generate, bench. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BPF_CLANG ?= clang-19
BPF_CFLAGS ?= -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
BIN := $(CURDIR)/bin
export BPF_CLANG BPF_CFLAGS

CMDS := anet-cni anetd anetctl anet-install

.PHONY: all help setup build generate verify test test-unit test-priv bench demo clean

all: build

help:
	@echo "make demo      two pods on one node, wired by anet (root)"
	@echo "make test      everything CI runs: setup, build, verify, unit and privileged tests (root)"
	@echo "make generate  rebuild the eBPF objects with $(BPF_CLANG) (bpf2go)"
	@echo "make verify    gofmt, go vet, and stale-generated-object check"
	@echo "make bench     benchmarks against the reference plugins; writes bench/results.md"

setup:
	@scripts/setup.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/anet-cni ./plugins/anet-cni
	$(GO) build -o $(BIN)/anetd ./daemon/cmd/anetd
	$(GO) build -o $(BIN)/anetctl ./daemon/cmd/anetctl
	CGO_ENABLED=0 $(GO) build -o $(BIN)/anet-testserver ./lab/testserver
	$(GO) build -o $(BIN)/cnitool github.com/containernetworking/cni/cnitool
	$(GO) build -o $(BIN)/bridge github.com/containernetworking/plugins/plugins/main/bridge
	$(GO) build -o $(BIN)/host-local github.com/containernetworking/plugins/plugins/ipam/host-local

generate:
	$(GO) generate ./bpf/...

verify:
	@scripts/verify.sh

test-unit:
	$(GO) test -race -count=1 ./...

test: setup build verify
	@scripts/test.sh

bench: setup build
	@scripts/bench.sh

demo: setup build
	@scripts/demo.sh

clean:
	rm -rf $(BIN)
