//go:build tools

// Package tools records the Kubernetes commands this module builds, so that
// `go mod tidy` keeps every module they need in go.mod and go.sum. It is never
// compiled into anything; scripts/k8s-binaries.sh builds each command with
// `go build k8s.io/kubernetes/cmd/NAME`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
