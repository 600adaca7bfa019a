// Command coredns is CoreDNS (github.com/coredns/coredns), built from its Go
// module at the version pinned in go.mod with only the plugins the lab's
// cluster DNS uses. See ../coredns-binary.sh, which builds it, and
// lab/dns.go, which deploys it. Kept out of the project's main go.mod on
// purpose, like ../k8s.
//
// There is no forward plugin (nor grpc, etcd or any other that asks a
// server elsewhere): the lab has no way out, and nothing in it may resolve
// a name through the machine's resolver. A name outside the zones it serves
// is refused.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives are the Corefile directives this build knows, in CoreDNS's
// execution order (the order of plugin.cfg at the pinned version: a plugin
// sees a query after every plugin above it). metadata and transfer come
// with kubernetes, and prometheus (the metrics plugin) with cache, which
// import them; scripts/coredns-binary.sh checks that `coredns -plugins`
// reports exactly these.
var directives = []string{
	"metadata",
	"reload",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
	"loop",
}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
