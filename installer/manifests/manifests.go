// Package manifests embeds the manifests anet ships (this directory, which
// `kubectl apply -R -f installer/manifests/` takes as is), so that the
// lab and the tests apply the same YAML an operator does.
package manifests

import _ "embed"

// RBAC is anetd's Namespace, ServiceAccount, ClusterRole and
// ClusterRoleBinding.
//
//go:embed rbac.yaml
var RBAC []byte

// Namespace and ServiceAccount are anetd's, as RBAC names them.
const (
	Namespace      = "anet-system"
	ServiceAccount = "anetd"
)

// User is the name the API server knows anetd by.
const User = "system:serviceaccount:" + Namespace + ":" + ServiceAccount
