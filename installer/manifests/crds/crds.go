// Package crds embeds anet's CustomResourceDefinition manifests, so that
// anetd and tests apply the same YAML the installer ships.
package crds

import _ "embed"

// SecurityIdentity is the anet.dev/v1alpha1 SecurityIdentity CRD.
//
//go:embed securityidentities.yaml
var SecurityIdentity []byte
