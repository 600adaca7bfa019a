package main

import (
	"testing"

	"github.com/anet-dev/anet/daemon/api"
)

func TestPodRef(t *testing.T) {
	full := api.PodRef{Namespace: "ns", Name: "web", UID: "u-1"}
	good := map[string]api.PodRef{
		"":  {},
		";": {},
		"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u-1":                         full,
		"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u-1;":                        full, // trailing ";" as runtimes send
		";K8S_POD_NAMESPACE=ns;;K8S_POD_NAME=web;K8S_POD_UID=u-1;;":                     full,
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u-1;FOO=a=b": full,
	}
	for in, want := range good {
		got, err := podRef(in)
		if err != nil || got != want {
			t.Errorf("podRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"K8S_POD_NAME", "K8S_POD_NAME=web;junk", " ;K8S_POD_NAME=web"} {
		if _, err := podRef(in); err == nil {
			t.Errorf("podRef(%q) accepted", in)
		}
	}
}
