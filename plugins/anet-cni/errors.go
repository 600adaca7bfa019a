package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/anet-dev/anet/cniconf"
	"github.com/anet-dev/anet/daemon/api"
)

// Plugin-specific CNI error codes (the spec reserves 100 and up for them).
const (
	errExists = 100 // the attachment is already set up
	errFull   = 101 // the node's pod CIDR has no free address
)

func configError(err error) error {
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

func envError(format string, a ...any) error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(format, a...), "")
}

// daemonError turns a failed anetd call into the CNI error a runtime can act
// on: "try again later" while anetd is down or not ready.
func daemonError(what string, err error) error {
	var unavail *api.UnavailableError
	switch {
	case errors.As(err, &unavail), errors.Is(err, api.ErrNotReady):
		return types.NewError(types.ErrTryAgainLater, what+": anetd is not available", err.Error())
	case errors.Is(err, api.ErrExists):
		return types.NewError(errExists, what+": attachment already exists", err.Error())
	case errors.Is(err, api.ErrFull):
		return types.NewError(errFull, what+": no free pod address", err.Error())
	}
	return types.NewError(types.ErrInternal, what, err.Error())
}

func loadConf(stdin []byte) (*cniconf.NetConf, error) {
	conf, err := cniconf.Parse(stdin)
	if err != nil {
		return nil, configError(err)
	}
	return conf, nil
}
