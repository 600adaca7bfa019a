// Package bpf holds anet's eBPF programs: C sources, and the objects and Go
// bindings that bpf2go generates from them (committed; `make generate`
// rebuilds them with the pinned clang).
package bpf

//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type endpoint_info -type metrics_key -type metrics_value Lxc lxc.c
