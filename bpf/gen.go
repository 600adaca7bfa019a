// Package bpf holds anet's eBPF programs: C sources, and the objects and Go
// bindings that bpf2go generates from them (committed; `make generate`
// rebuilds them with the pinned clang).
package bpf

//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -tags !anet_mapvariant -target bpfel -type endpoint_info -type metrics_key -type metrics_value -type ipcache_key -type ipcache_entry -type policy_key -type policy_entry -type policy_ep -type ct4_key -type pol_ct_entry Lxc lxc.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -tags !anet_mapvariant -target bpfel -type lb4_key -type lb4_service -type lb4_backend -type lb4_revnat -type lb4_affinity_key -type lb4_affinity -type lb4_affinity_match -type sock4_revnat_key -type sock4_revnat Sock sock.c

// A test-only build of the same programs with changed map layouts (a field
// added to endpoint_info and metrics_value), compiled into anetd only with
// `-tags anet_mapvariant`: the upgrade test runs it against a node of the
// normal build to prove that pinned maps are migrated, both ways. The socket
// programs share anet_metrics, so they have a variant too.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -DANET_TEST_MAP_VARIANT" -tags anet_mapvariant -output-stem lxcvariant -target bpfel -type endpoint_info -type metrics_key -type metrics_value -type ipcache_key -type ipcache_entry -type policy_key -type policy_entry -type policy_ep -type ct4_key -type pol_ct_entry Lxc lxc.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -DANET_TEST_MAP_VARIANT" -tags anet_mapvariant -output-stem sockvariant -target bpfel -type lb4_key -type lb4_service -type lb4_backend -type lb4_revnat -type lb4_affinity_key -type lb4_affinity -type lb4_affinity_match -type sock4_revnat_key -type sock4_revnat Sock sock.c

// The underlay device's programs (per-packet service translation), in both
// builds for the same reason: they share the endpoint map.
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -tags !anet_mapvariant -target bpfel -type ct4_key -type ct4_entry -type node_config -type tunnel_key -type tunnel_peer Host host.c
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags "${BPF_CFLAGS} -DANET_TEST_MAP_VARIANT" -tags anet_mapvariant -output-stem hostvariant -target bpfel -type ct4_key -type ct4_entry -type node_config -type tunnel_key -type tunnel_peer Host host.c

// Termination of connected UDP sockets whose backend left its Service: an
// iter/udp program that anetd reads in each network namespace. It shares
// only anet_sock4_revnat, which the variant build leaves alone, so one
// build serves both (anetd loads the program and those two maps alone).
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -type sockterm_key Sockterm sockterm.c
