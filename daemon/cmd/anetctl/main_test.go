package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/apiserver"
)

func serve(t *testing.T, list func() []api.ServiceFrontend) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "anetd.sock")
	ln, err := apiserver.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(nil, func() api.Status { return api.Status{Ready: true} }, slog.New(slog.DiscardHandler))
	if list != nil {
		srv.SetServices(list)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return sock
}

var frontends = []api.ServiceFrontend{
	{
		Namespace: "default", Name: "web", Port: "http", Kind: "ClusterIP", Scope: "external",
		Address: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: "TCP", Active: 1, Programmed: true,
		Backends: []api.ServiceBackend{
			{Address: netip.MustParseAddrPort("10.244.1.5:8080"), State: "ready", Active: true, ID: 1},
			{Address: netip.MustParseAddrPort("10.244.2.5:8080"), State: "terminating", ID: 2},
		},
	},
	{
		Namespace: "default", Name: "web", Port: "http", Kind: "NodePort", Scope: "external", ExternalLocal: true,
		Address: netip.MustParseAddrPort("10.77.0.1:30080"), Protocol: "TCP", Programmed: true,
	},
	{
		Namespace: "default", Name: "web", Port: "http", Kind: "NodePort", Scope: "internal",
		Address: netip.MustParseAddrPort("10.77.0.1:30080"), Protocol: "TCP", Active: 1, Programmed: false, Error: "writing: service map full",
		Backends: []api.ServiceBackend{{Address: netip.MustParseAddrPort("10.244.2.6:8080"), State: "serving", Active: true}},
	},
	{
		Namespace: "kube-system", Name: "kube-dns", Port: "dns", Kind: "ClusterIP", Scope: "external",
		Address: netip.MustParseAddrPort("10.96.0.53:53"), Protocol: "UDP", Programmed: true,
		Backends: []api.ServiceBackend{{Address: netip.MustParseAddrPort("10.244.1.9:53"), State: "not-ready"}},
	},
}

func TestServiceList(t *testing.T) {
	sock := serve(t, func() []api.ServiceFrontend { return frontends })
	var out bytes.Buffer
	if err := run([]string{"--socket", sock, "service", "list"}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	want := [][]string{
		{"SERVICE", "KIND", "FRONTEND", "PROTO", "BACKENDS"},
		{"default/web:http", "ClusterIP", "10.96.0.10:80", "TCP", "10.244.1.5:8080 (ready), 10.244.2.5:8080 (terminating)"},
		{"default/web:http", "NodePort local", "10.77.0.1:30080", "TCP", "none: refused"},
		{"default/web:http", "NodePort (in-cluster)", "10.77.0.1:30080", "TCP", "NOT PROGRAMMED (writing: service map full): 10.244.2.6:8080 (serving)"},
		{"kube-system/kube-dns:dns", "ClusterIP", "10.96.0.53:53", "UDP", "none usable, refused: 10.244.1.9:53 (not-ready)"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	// Columns start where the header's do.
	hdr := lines[0]
	cols := []int{0}
	for _, h := range want[0][1:] {
		cols = append(cols, strings.Index(hdr, h))
	}
	for i, l := range lines {
		for j, cell := range want[i] {
			end := len(l)
			if j+1 < len(cols) {
				end = cols[j+1]
			}
			if got := strings.TrimSpace(l[cols[j]:min(end, len(l))]); got != cell {
				t.Errorf("line %d column %s = %q, want %q\n%s", i, want[0][j], got, cell, out.String())
			}
		}
	}

	out.Reset()
	if err := run([]string{"--socket", sock, "svc", "list", "-o", "json"}, &out); err != nil {
		t.Fatal(err)
	}
	var got []api.ServiceFrontend
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || !reflect.DeepEqual(got, frontends) {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if err := run([]string{"--socket", sock, "service", "list", "-o", "yaml"}, &out); err == nil || !strings.Contains(err.Error(), "unknown format") {
		t.Errorf("-o yaml: %v", err)
	}
}

func TestServiceListOff(t *testing.T) {
	sock := serve(t, nil)
	var out bytes.Buffer
	err := run([]string{"--socket", sock, "service", "list"}, &out)
	if err == nil || !strings.Contains(err.Error(), "does not serve Services") {
		t.Errorf("services off: %v", err)
	}
}
