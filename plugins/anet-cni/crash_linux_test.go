//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/endpoint"
	"github.com/anet-dev/anet/internal/testhook"
	"github.com/anet-dev/anet/lab/testnode"
)

// anetd dies in the middle of an ADD, at each of its steps (as if killed
// there: it exits at once, with no undo). The runtime sees "try again
// later"; once anetd is back, nothing of the ADD is left but what it made
// durable: before the record, nothing at all (no device, pin, allocation,
// record or map entry, and no interface in the pod); after it, the
// endpoint, which the runtime's DEL removes. Either way the ADD then
// succeeds when the runtime retries it.
func TestAddCrashAtEachStep(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	peer := n.NewPod("peer")
	n.MustAdd(peer)
	for _, step := range []string{endpoint.StepReserved, datapath.StepVeth, datapath.StepAttached, datapath.StepPod, datapath.StepHost, endpoint.StepMapped, endpoint.StepRecorded} {
		t.Run(step, func(t *testing.T) {
			p := n.NewPod("crash")
			t.Setenv(testhook.CrashEnv, step)
			n.StopAnetd()
			n.StartAnetd()
			_, err := n.Add(p)
			if err == nil {
				t.Fatal("ADD succeeded with anetd dying in it")
			}
			if code := cniCode(err); code != types.ErrTryAgainLater {
				t.Errorf("ADD error %v (code %d), want code %d (try again later)", err, code, types.ErrTryAgainLater)
			}
			t.Setenv(testhook.CrashEnv, "")
			n.StopAnetd() // reaps the dead one
			n.StartAnetd()

			eps := listEndpoints(t, n)
			_, kept := eps[p.ContainerID]
			if want := step == endpoint.StepRecorded; kept != want {
				t.Fatalf("endpoint of the crashed ADD kept: %v, want %v", kept, want)
			}
			if kept {
				// The runtime's DEL after a failed ADD.
				if err := n.Del(p); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if len(listEndpoints(t, n)) != 1 {
				t.Fatalf("endpoints: %v", listEndpoints(t, n))
			}
			if ifs := podInterfaces(t, p); len(ifs) != 1 {
				t.Errorf("pod interfaces after the crash: %v, want only lo", ifs)
			}
			// What is left is the peer's alone: remove it for a moment to
			// check the node with the strict leftover check.
			if err := n.Del(peer); err != nil {
				t.Fatal(err)
			}
			assertClean(t, n)
			n.MustAdd(peer)

			// The runtime tries again.
			n.MustAdd(p)
			if err := p.Ping(peer.IP().String(), 1); err != nil {
				t.Fatalf("ping after the retried ADD: %v", err)
			}
			if err := n.Del(p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func podInterfaces(t *testing.T, p *testnode.Pod) []string {
	t.Helper()
	var names []string
	err := p.NS.Do(func(ns.NetNS) error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// ADD and DEL of one attachment raced, many times, as a runtime that gives
// up on a slow ADD may do: whichever wins, anetd is consistent afterwards,
// never an endpoint without its address or device, nor an address or
// device without an endpoint; and a last DEL leaves nothing.
func TestAddRacesDel(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	p := n.NewPod("race")
	hostIf := datapath.HostIfName(p.ContainerID, p.IfName)
	kept := 0
	for i := range 40 {
		var wg sync.WaitGroup
		for _, verb := range []string{"ADD", "DEL"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = n.PluginCmd(verb, p).Run()
			}()
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := n.Client().Status(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		eps := listEndpoints(t, n)
		ep, has := eps[p.ContainerID]
		if st.Endpoints != len(eps) || st.Allocated != st.Endpoints {
			t.Fatalf("round %d: %d endpoints, %d allocations", i, st.Endpoints, st.Allocated)
		}
		var devErr error
		_ = n.NS.Do(func(ns.NetNS) error { _, devErr = net.InterfaceByName(hostIf); return nil })
		if has != (devErr == nil) {
			t.Fatalf("round %d: endpoint %v, host device %v", i, has, devErr)
		}
		if ifs := podInterfaces(t, p); has != (len(ifs) == 2) {
			t.Fatalf("round %d: endpoint %v, pod interfaces %v", i, has, ifs)
		}
		if has {
			kept++
			if ep.IP.String() != podAddr(t, p) {
				t.Fatalf("round %d: endpoint %s, pod address %s", i, ep.IP, podAddr(t, p))
			}
		}
		if err := n.PluginCmd("DEL", p).Run(); err != nil {
			t.Fatalf("round %d: DEL: %v", i, err)
		}
		assertClean(t, n)
	}
	t.Logf("the ADD won %d of 40 rounds", kept)
}

func podAddr(t *testing.T, p *testnode.Pod) string {
	t.Helper()
	var addr string
	err := p.NS.Do(func(ns.NetNS) error {
		i, err := net.InterfaceByName(p.IfName)
		if err != nil {
			return err
		}
		as, err := i.Addrs()
		if err != nil || len(as) == 0 {
			return fmt.Errorf("addresses of %s: %v %v", p.IfName, as, err)
		}
		addr = strings.Split(as[0].String(), "/")[0]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
