# anet — build, test, generate, bench. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BPF_CLANG ?= clang-19
BPF_CFLAGS ?= -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
BIN := $(CURDIR)/bin
export BPF_CLANG BPF_CFLAGS

.PHONY: all help setup build generate verify test test-unit bench demo demo-node lab-down test-scale clean

all: build

help:
	@echo "make demo      a 2-node lab (real kubelets, containerd, anetd) with an example app (root)"
	@echo "make lab-down  remove the demo's lab"
	@echo "make demo-node two pods on one node wired by cnitool, step by step (root)"
	@echo "make test-scale a 10-node lab with 100 pods (root)"
	@echo "make test      everything CI runs: setup, build, verify, unit and privileged tests (root)"
	@echo "make generate  rebuild the eBPF objects with $(BPF_CLANG) (bpf2go)"
	@echo "make verify    gofmt, go vet, and stale-generated-object check"
	@echo "make bench     benchmarks against the reference plugins; writes bench/results.md"

setup:
	@scripts/setup.sh

# The CNI plugins (anet-cni, and the reference bridge and host-local that
# the benchmark compares with) are built static, as the reference plugins'
# releases are: a dynamically linked Go binary starts about 0.8 ms slower.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/anet-cni ./plugins/anet-cni
	$(GO) build -o $(BIN)/anetd ./daemon/cmd/anetd
	$(GO) build -o $(BIN)/anetctl ./daemon/cmd/anetctl
	$(GO) build -o $(BIN)/anet-install ./installer/cmd/anet-install
	$(GO) build -o $(BIN)/anet-lab ./lab/cmd/anet-lab
	CGO_ENABLED=0 $(GO) build -o $(BIN)/anet-testserver ./lab/testserver
	$(GO) build -o $(BIN)/cnitool github.com/containernetworking/cni/cnitool
	CGO_ENABLED=0 $(GO) build -o $(BIN)/bridge github.com/containernetworking/plugins/plugins/main/bridge
	CGO_ENABLED=0 $(GO) build -o $(BIN)/host-local github.com/containernetworking/plugins/plugins/ipam/host-local

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

lab-down: build
	@$(BIN)/anet-lab down

demo-node: setup build
	@scripts/demo-node.sh

test-scale: setup build
	@scripts/k8s-binaries.sh >/dev/null
	ANET_BIN=$(BIN) ANET_LAB_SCALE=1 $(GO) test -count=1 -timeout 30m -run TestScale -v ./lab/

clean:
	rm -rf $(BIN)
