package api

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// HostIfName is the deterministic name of an attachment's host-side veth:
// "anet" and 11 hex digits of a hash of the container ID and interface
// name, 15 bytes, the most Linux allows. anetd names the devices it makes
// so, and anet-cni finds the device by it when anetd is away (a DEL). It
// lives here, in the package both share, so that anet-cni need not link
// the datapath (datapath.HostIfName is this function).
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "anet" + hex.EncodeToString(sum[:])[:11]
}

// IsHostIfName says whether name has the shape of HostIfName's names.
func IsHostIfName(name string) bool {
	if len(name) != 15 || !strings.HasPrefix(name, "anet") {
		return false
	}
	for _, c := range name[4:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
