//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/internal/testpkt"
)

// Section 6: the per-packet cost of the pod programs with NetworkPolicy
// (issue 9), in the kernel with BPF_PROG_TEST_RUN, against the same
// programs with the endpoints not under policy (no anet_pol_ep entry).
//
// Two nodes, each a datapath.LoadUnpinned() with maps of its own, in a
// scratch netns: node 1 holds pod A (on lo, the test run's device) and pod
// C (a made-up ifindex: bpf_redirect_peer in a test run only records it);
// node 2 holds pod B (on its lo). Three paths of one TCP connection to
// port 8080: A's egress to B (anet_from_container of node 1, to the host
// stack), B's ingress from A (anet_to_container of node 2), and A to C on
// node 1 (anet_from_container judges A's egress and C's ingress, then
// redirects). Each path runs its first packet (a SYN: conntrack miss,
// policy, two conntrack inserts) and an established one (ACK with 256
// bytes of payload: conntrack hit), with the endpoints (a) not under
// policy, (b) under policy with an allowing rule, at four fillings of the
// maps: the bench's own entries only, then 50 000 ipcache entries of
// 5 000 identities with 0, 1 000 and 10 000 further rules in the policy
// map of each node.
//
// A first packet is one run (repeat 1): the run creates the connection's
// two conntrack entries, which the bench deletes before the next, so that
// each run misses again. The kernel's figure for one run includes its
// clock reads around it; the empty program, run the same way, measures
// that floor. Established packets run in chunks of chunkRepeat (the
// redirecting path decrements the TTL of the skb the kernel reuses).

const (
	polPortAllowed    = 8080 // allowed by the sender's egress and the receiver's ingress
	polPortDenied     = 9090 // allowed by no rule: the sender's egress refuses it
	polPortIngDenied  = 9091 // allowed by A's egress to C, not by C's ingress
	polSport          = 40000
	polSportControl   = 40001
	polPayload        = 256
	polIDA            = 1000
	polIDB            = 1001
	polIDC            = 1002
	polFillIdentities = 5000
	polFillIPCache    = 50000
	polFillIDBase     = 10000
	polOtherEPs       = 50
	polOtherIfBase    = 5000
	polRounds         = 10 // rounds per filling and pass: (a) and (b) alternate round by round
)

var polRemoteIP = netip.MustParseAddr("10.244.2.9") // pod B, on node 2

type polConfig struct {
	packets, first, passes int
}

func (c *polConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.packets, "pol-packets", 250_000, "established packets per case per filling per pass in the policy section")
	fs.IntVar(&c.first, "pol-first", 2000, "first packets (one run each) per case per filling per pass in the policy section")
	fs.IntVar(&c.passes, "pol-passes", 5, "passes of the policy section")
}

func (c *polConfig) quick() { c.packets, c.first, c.passes = 25_000, 200, 2 }

// polLevel is one filling of the maps.
type polLevel struct {
	name    string
	ipcache bool // 50 000 ipcache entries of 5 000 identities
	rules   int  // further rules in each node's policy map
}

var polLevels = []polLevel{
	{"own entries only", false, 0},
	{"0 rules, 50 000 ipcache", true, 0},
	{"1 000 rules, 50 000 ipcache", true, 1000},
	{"10 000 rules, 50 000 ipcache", true, 10000},
}

type polNode struct {
	name     string
	dp       *datapath.Datapath
	from, to *ebpf.Program
	ct       *ebpf.Map // anet_pol_ct4
	// The allowing rules of the endpoints under test, by ifindex:
	// ingress, egress.
	own     map[uint32][2][]datapath.PolicyRule
	share   map[uint32]int // each one's share of the level's further rules (of 4)
	ipcache bool
}

// polPath is one program run on one packet of the connection.
type polPath struct {
	key, name         string
	node              *polNode
	prog              *ebpf.Program
	syn, est, denied  []byte
	verdict           uint32
	orig, reply       bpf.LxcCt4Key // the connection's conntrack entries
	ctlOrig, ctlReply bpf.LxcCt4Key
}

type polEnv struct {
	n1, n2  *polNode
	paths   []*polPath
	empty   *ebpf.Program
	emptyPk []byte
	level   polLevel
}

func polTCP(src, dst netip.Addr, sport, dport uint16, flags uint8, payload int) []byte {
	return testpkt.TCP{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: sport, DstPort: dport,
		Flags: flags, Seq: 1, Ack: 1, TTL: 255, Payload: make([]byte, payload)}.Frame()
}

// ctKey is the anet_pol_ct4 key of a TCP tuple: addresses and ports in
// network byte order, as the kernel keys them.
func ctKey(src, dst netip.Addr, sport, dport uint16) bpf.LxcCt4Key {
	s, d := src.As4(), dst.As4()
	be := func(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }
	return bpf.LxcCt4Key{Saddr: binary.NativeEndian.Uint32(s[:]), Daddr: binary.NativeEndian.Uint32(d[:]),
		Sport: be(sport), Dport: be(dport), Proto: 6}
}

// progMap finds a map of a loaded program by name (the datapath keeps its
// maps to itself).
func progMap(p *ebpf.Program, name string) (*ebpf.Map, error) {
	info, err := p.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			return m, nil
		}
		m.Close()
	}
	return nil, fmt.Errorf("program %s has no map %s", info.Name, name)
}

func tcpRule(id uint32, port uint16) datapath.PolicyRule {
	return datapath.PolicyRule{Identity: id, Proto: 6, Port: port, PortPrefixLen: 16}
}

// fillRules are n rules for identities of the filling: every other one a
// block of 16 ports, the rest one port.
func fillRules(n, salt int) []datapath.PolicyRule {
	out := make([]datapath.PolicyRule, 0, n)
	for j := range n {
		r := datapath.PolicyRule{Identity: uint32(polFillIDBase + (j+salt)%polFillIdentities), Proto: 6,
			Port: uint16(2048 + 16*(j/polFillIdentities)), PortPrefixLen: 16}
		if j%2 == 1 {
			r.PortPrefixLen = 12
		}
		out = append(out, r)
	}
	return out
}

func newPolNode(name string, eps []datapath.Endpoint) (*polNode, error) {
	dp, err := datapath.LoadUnpinned()
	if err != nil {
		return nil, fmt.Errorf("%s: loading the datapath: %w", name, err)
	}
	n := &polNode{name: name, dp: dp, from: dp.Program(datapath.ProgFromContainer), to: dp.Program(datapath.ProgToContainer),
		own: map[uint32][2][]datapath.PolicyRule{}, share: map[uint32]int{}}
	if n.ct, err = progMap(n.from, bpf.LxcMapAnetPolCt4); err != nil {
		dp.Close()
		return nil, err
	}
	for _, ep := range eps {
		if err := dp.UpsertEndpoint(ep); err != nil {
			n.close()
			return nil, err
		}
	}
	for a, id := range map[netip.Addr]uint32{podIP: polIDA, peerIP: polIDC, polRemoteIP: polIDB} {
		if err := dp.SetIPCache(netip.PrefixFrom(a, 32), id); err != nil {
			n.close()
			return nil, err
		}
	}
	return n, nil
}

func (n *polNode) close() {
	if n.ct != nil {
		n.ct.Close()
	}
	n.dp.Close()
}

// newPolEnv loads the two nodes; the caller is in a scratch netns on a
// locked thread.
func newPolEnv() (*polEnv, error) {
	n1, err := newPolNode("node 1", []datapath.Endpoint{
		{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC, Identity: polIDA},
		{IP: peerIP, Ifindex: peerIfindex, PodMAC: peerMAC, HostMAC: peerHst, Identity: polIDC},
	})
	if err != nil {
		return nil, err
	}
	n2, err := newPolNode("node 2", []datapath.Endpoint{
		{IP: polRemoteIP, Ifindex: loIfindex, PodMAC: peerMAC, HostMAC: peerHst, Identity: polIDB},
	})
	if err != nil {
		n1.close()
		return nil, err
	}
	e := &polEnv{n1: n1, n2: n2, emptyPk: polTCP(podIP, polRemoteIP, polSport, polPortAllowed, testpkt.TCPAck, polPayload)}
	e.empty, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		e.close()
		return nil, fmt.Errorf("loading the empty program: %w", err)
	}
	// A: isolated both ways, its egress allows B and C on 8080 (and C on
	// 9091, which C's ingress refuses). C and B: isolated both ways, their
	// ingress allows A on 8080. Each node's further rules: half on the
	// judged directions of the endpoints under test, half on 50 others.
	n1.own[loIfindex] = [2][]datapath.PolicyRule{nil, {tcpRule(polIDB, polPortAllowed), tcpRule(polIDC, polPortAllowed), tcpRule(polIDC, polPortIngDenied)}}
	n1.own[peerIfindex] = [2][]datapath.PolicyRule{{tcpRule(polIDA, polPortAllowed)}, nil}
	n1.share[loIfindex], n1.share[peerIfindex] = 1, 1 // A's egress, C's ingress: a quarter each
	n2.own[loIfindex] = [2][]datapath.PolicyRule{{tcpRule(polIDA, polPortAllowed)}, nil}
	n2.share[loIfindex] = 2 // B's ingress: half

	syn := func(dst netip.Addr, port uint16) []byte { return polTCP(podIP, dst, polSport, port, testpkt.TCPSyn, 0) }
	est := func(dst netip.Addr) []byte {
		return polTCP(podIP, dst, polSport, polPortAllowed, testpkt.TCPAck|0x08, polPayload)
	}
	ctl := func(dst netip.Addr, port uint16) []byte {
		return polTCP(podIP, dst, polSportControl, port, testpkt.TCPSyn, 0)
	}
	mk := func(key, name string, n *polNode, prog *ebpf.Program, dst netip.Addr, verdict uint32, ctlPort uint16) *polPath {
		return &polPath{key: key, name: name, node: n, prog: prog, syn: syn(dst, polPortAllowed), est: est(dst),
			denied: ctl(dst, ctlPort), verdict: verdict,
			orig: ctKey(podIP, dst, polSport, polPortAllowed), reply: ctKey(dst, podIP, polPortAllowed, polSport),
			ctlOrig: ctKey(podIP, dst, polSportControl, ctlPort), ctlReply: ctKey(dst, podIP, ctlPort, polSportControl)}
	}
	e.paths = []*polPath{
		mk("egress", "A's egress to a pod of another node (`anet_from_container`, to the host stack)", n1, n1.from, polRemoteIP, tcActOK, polPortDenied),
		mk("ingress", "B's ingress from a pod of another node (`anet_to_container`)", n2, n2.to, polRemoteIP, tcActOK, polPortDenied),
		mk("local", "A to C on one node (`anet_from_container`: A's egress, C's ingress, `bpf_redirect_peer`)", n1, n1.from, peerIP, tcActRedirect, polPortIngDenied),
	}
	return e, nil
}

func (e *polEnv) close() {
	if e.empty != nil {
		e.empty.Close()
	}
	e.n1.close()
	e.n2.close()
}

func (n *polNode) setIPCache(on bool) error {
	if n.ipcache == on {
		return nil
	}
	base := netip.MustParseAddr("10.128.0.0").As4()
	start := binary.BigEndian.Uint32(base[:])
	for i := range polFillIPCache {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], start+uint32(i))
		p := netip.PrefixFrom(netip.AddrFrom4(a), 32)
		var err error
		if on {
			err = n.dp.SetIPCache(p, uint32(polFillIDBase+i%polFillIdentities))
		} else {
			err = n.dp.DeleteIPCache(p)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	n.ipcache = on
	return nil
}

// setRules writes the level's rules and the endpoints' isolation: policed
// puts the endpoints under test under policy; their rules are the same
// either way (case (a) has no anet_pol_ep entry, nothing else differs).
func (n *polNode) setRules(rules int, policed bool) error {
	var salt int
	for ifi, own := range n.own {
		in, eg := own[0], own[1]
		share := fillRules(rules*n.share[ifi]/4, salt)
		salt += 97
		if len(in) > 0 {
			in = append(append([]datapath.PolicyRule{}, in...), share...)
		} else {
			eg = append(append([]datapath.PolicyRule{}, eg...), share...)
		}
		if err := n.dp.SetEndpointPolicy(ifi, policed, policed, in, eg); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	per := rules / 2 / polOtherEPs / 2
	for i := range polOtherEPs {
		r := fillRules(2*per, 31*i)
		if err := n.dp.SetEndpointPolicy(uint32(polOtherIfBase+i), per > 0, per > 0, r[:per], r[per:]); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	return nil
}

func (e *polEnv) setLevel(l polLevel, policed bool) error {
	for _, n := range []*polNode{e.n1, e.n2} {
		if err := n.setIPCache(l.ipcache); err != nil {
			return err
		}
		if err := n.setRules(l.rules, policed); err != nil {
			return err
		}
	}
	e.level = l
	return nil
}

// setPoliced changes the isolation of the endpoints under test only.
func (e *polEnv) setPoliced(on bool) error {
	for _, n := range []*polNode{e.n1, e.n2} {
		if err := n.setRules(e.level.rules, on); err != nil {
			return err
		}
	}
	return nil
}

// deleteCT removes a connection's two entries and fails unless both were
// there: the run before created them (the miss path ran to its end).
func deleteCT(m *ebpf.Map, keys ...bpf.LxcCt4Key) error {
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			return fmt.Errorf("conntrack entry %+v: %w", k, err)
		}
	}
	return nil
}

func run1(p *ebpf.Program, pkt []byte, repeat int, want uint32, what string) (float64, error) {
	ret, d, err := p.Benchmark(pkt, repeat, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if ret != want {
		return 0, fmt.Errorf("%s: verdict %d, want %d", what, ret, want)
	}
	return float64(d.Nanoseconds()), nil
}

// first runs the SYN n times, each a conntrack miss.
func (p *polPath) first(n int, out []float64) ([]float64, error) {
	for range n {
		d, err := run1(p.prog, p.syn, 1, p.verdict, p.key+" first packet")
		if err != nil {
			return out, err
		}
		if err := deleteCT(p.node.ct, p.orig, p.reply); err != nil {
			return out, fmt.Errorf("%s first packet: %w", p.key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// established opens the connection (SYN, then one ACK, untimed), runs
// chunks of established packets and returns the sum of their per-packet
// means; the entries it finds at the end prove every run was a hit.
func (p *polPath) established(chunks int) (float64, error) {
	if _, err := run1(p.prog, p.syn, 1, p.verdict, p.key+" opening SYN"); err != nil {
		return 0, err
	}
	if _, err := run1(p.prog, p.est, 1, p.verdict, p.key+" first ACK"); err != nil {
		return 0, err
	}
	var sum float64
	for range chunks {
		d, err := run1(p.prog, p.est, chunkRepeat, p.verdict, p.key+" established")
		if err != nil {
			return 0, err
		}
		sum += d
	}
	if err := deleteCT(p.node.ct, p.orig, p.reply); err != nil {
		return 0, fmt.Errorf("%s established: %w", p.key, err)
	}
	return sum, nil
}

// control runs the path's denied variant once: dropped under policy,
// passed (and its entries removed) without. It proves the state measured.
func (p *polPath) control(policed bool) error {
	if policed {
		_, err := run1(p.prog, p.denied, 1, tcActShot, p.key+" denied variant under policy")
		return err
	}
	if _, err := run1(p.prog, p.denied, 1, p.verdict, p.key+" denied variant without policy"); err != nil {
		return err
	}
	return deleteCT(p.node.ct, p.ctlOrig, p.ctlReply)
}

// polSample is one pass's figure of one case: ns per packet.
type polSample struct{ est, first []float64 }

type polResult struct {
	cfg    polConfig
	chunks int // established chunks per case per filling per pass
	firsts int
	// v[level][policed][path] over the passes
	v               [][2]map[string]*polSample
	floorEst, floor []float64 // the empty program, per pass
	controls        int
	checks          []string
	paths           []*polPath // for the report: key and name only
}

func (b *bench) benchPolicy() *polResult {
	var res *polResult
	err := inScratchNS(func() error {
		e, err := newPolEnv()
		if err != nil {
			return err
		}
		defer e.close()
		res, err = polRuns(e, b.cfg.pol, b.logf)
		return err
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

func polRuns(e *polEnv, cfg polConfig, logf func(string, ...any)) (*polResult, error) {
	chunksPerRound := max(1, cfg.packets/chunkRepeat/polRounds)
	firstPerRound := max(1, cfg.first/polRounds)
	res := &polResult{cfg: cfg, chunks: chunksPerRound * polRounds, firsts: firstPerRound * polRounds}
	for _, p := range e.paths {
		res.paths = append(res.paths, &polPath{key: p.key, name: p.name})
	}
	for range polLevels {
		var s [2]map[string]*polSample
		for i := range s {
			s[i] = map[string]*polSample{}
			for _, p := range e.paths {
				s[i][p.key] = &polSample{}
			}
		}
		res.v = append(res.v, s)
	}
	for pass := range cfg.passes {
		var floorEst float64
		var floorFirst []float64
		for li, l := range polLevels {
			if err := e.setLevel(l, false); err != nil {
				return nil, err
			}
			est := [2]map[string]float64{{}, {}}
			first := [2]map[string][]float64{{}, {}}
			for round := range polRounds {
				for k := range 2 {
					policed := (round+k)%2 == 1
					st := 0
					if policed {
						st = 1
					}
					if err := e.setPoliced(policed); err != nil {
						return nil, err
					}
					for i := range e.paths {
						p := e.paths[(i+round)%len(e.paths)]
						sum, err := p.established(chunksPerRound)
						if err != nil {
							return nil, fmt.Errorf("%s, %s: %w", l.name, map[bool]string{false: "(a)", true: "(b)"}[policed], err)
						}
						est[st][p.key] += sum
						if first[st][p.key], err = p.first(firstPerRound, first[st][p.key]); err != nil {
							return nil, fmt.Errorf("%s: %w", l.name, err)
						}
						if err := p.control(policed); err != nil {
							return nil, fmt.Errorf("%s: %w", l.name, err)
						}
						res.controls++
					}
				}
				for range chunksPerRound {
					d, err := run1(e.empty, e.emptyPk, chunkRepeat, tcActOK, "empty program")
					if err != nil {
						return nil, err
					}
					floorEst += d
				}
				for range firstPerRound {
					d, err := run1(e.empty, e.emptyPk, 1, tcActOK, "empty program")
					if err != nil {
						return nil, err
					}
					floorFirst = append(floorFirst, d)
				}
			}
			for st := range 2 {
				for _, p := range e.paths {
					s := res.v[li][st][p.key]
					s.est = append(s.est, est[st][p.key]/float64(res.chunks))
					s.first = append(s.first, stats.Median(first[st][p.key]))
				}
			}
		}
		res.floorEst = append(res.floorEst, floorEst/float64(res.chunks*len(polLevels)))
		res.floor = append(res.floor, stats.Median(floorFirst))
		logf("policy: pass %d/%d done", pass+1, cfg.passes)
	}
	if err := e.setLevel(polLevels[0], false); err != nil {
		return nil, err
	}
	if err := res.checkCounters(e); err != nil {
		return nil, err
	}
	return res, nil
}

// checkCounters: the only drops are the denied variants', with the
// reasons the bench claims, on the endpoints it claims.
func (r *polResult) checkCounters(e *polEnv) error {
	perPath := uint64(r.controls / len(e.paths) / 2) // under policy, per path
	want := map[string]map[[3]uint32]uint64{
		e.n1.name: {
			{loIfindex, uint32(datapath.DirEgress), uint32(datapath.DropPolicyEgress)}:     perPath,
			{peerIfindex, uint32(datapath.DirIngress), uint32(datapath.DropPolicyIngress)}: perPath,
		},
		e.n2.name: {
			{loIfindex, uint32(datapath.DirIngress), uint32(datapath.DropPolicyIngress)}: perPath,
		},
	}
	var bad []string
	for _, n := range []*polNode{e.n1, e.n2} {
		all, err := n.dp.Counters()
		if err != nil {
			return err
		}
		for ifindex, m := range all {
			for k, v := range m {
				if k.Reason == datapath.ReasonForwarded {
					continue
				}
				key := [3]uint32{ifindex, uint32(k.Dir), uint32(k.Reason)}
				w, ok := want[n.name][key]
				if !ok {
					bad = append(bad, fmt.Sprintf("%s: unexpected drops ifindex %d %s %s: %d", n.name, ifindex, k.Dir, k.Reason, v.Packets))
				} else if v.Packets != w {
					bad = append(bad, fmt.Sprintf("%s: ifindex %d %s %s: %d, want %d", n.name, ifindex, k.Dir, k.Reason, v.Packets, w))
				}
				delete(want[n.name], key)
			}
		}
		for k, w := range want[n.name] {
			bad = append(bad, fmt.Sprintf("%s: no drops ifindex %d reason %s, want %d", n.name, k[0], datapath.Reason(k[2]), w))
		}
	}
	if len(bad) > 0 {
		return errors.New("the datapath counters disagree with the verdicts: " + strings.Join(bad, "; "))
	}
	r.checks = append(r.checks,
		fmt.Sprintf("ok: policy section: every run returned its expected verdict; every first packet left its two conntrack entries "+
			"(deleted before the next: each was a miss) and every established series found them; "+
			"after each series the denied variant (port %d to B, %d to C) passed without policy and was dropped under it: "+
			"%d policy-egress-denied on A, %d policy-ingress-denied on C and on B, no other drops", polPortDenied, polPortIngDenied,
			perPath, perPath))
	return nil
}

func (r *polResult) med(li, st int, key string, first bool) float64 {
	s := r.v[li][st][key]
	if first {
		return stats.Median(s.first)
	}
	return stats.Median(s.est)
}

// whole is the median over passes of a path sum: the sender's egress plus
// the receiver's ingress across nodes, or the one program on one node.
func (r *polResult) whole(li, st int, keys []string, first bool) []float64 {
	var out []float64
	for pass := range r.cfg.passes {
		var sum float64
		for _, k := range keys {
			s := r.v[li][st][k]
			if first {
				sum += s.first[pass]
			} else {
				sum += s.est[pass]
			}
		}
		out = append(out, sum)
	}
	return out
}

func (r *polResult) markdown() string {
	paths := r.paths
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	f1 := func(x float64) string { return fmt.Sprintf("%.1f", x) }
	w("Both programs of the pod devices as `datapath.LoadUnpinned()` loads them from bpf/ (today's build), on two simulated nodes "+
		"(each a datapath with maps of its own, in a scratch netns): node 1 holds pods A (on lo, the test run's device) and C, node 2 pod B. "+
		"One TCP connection A:%d → :%d on three paths: %s. "+
		"(a) the endpoints not under policy (no `anet_pol_ep` entry; the connection is tracked all the same: every connection to or from a pod is), "+
		"(b) A, B and C isolated in both directions with rules that allow the connection; both with the same rules in the maps. "+
		"First packet: a SYN, one test run each (conntrack miss → ipcache and policy lookups → two conntrack inserts), "+
		"its two conntrack entries deleted by the bench before the next run, %d per case per filling per pass, median; "+
		"the kernel's figure for one run includes its two clock reads, the empty program's row measures that floor. "+
		"Established: an ACK with %d bytes of payload after the connection's SYN and first ACK (conntrack hit), in chunks of %d runs "+
		"(the redirecting path decrements the TTL of the one skb), %s per case per filling per pass, mean. "+
		"Fillings: the bench's own entries only (3 ipcache entries, the allowing rules), then %s ipcache entries /32 of %s identities "+
		"with 0, 1 000 and 10 000 further rules in each node's policy map (single ports and 16-port blocks of those identities: "+
		"half of them on the judged directions of A, B and C, half on 50 other endpoints). "+
		"(a) and (b) alternate round by round (%d rounds per filling), the paths rotate, the fillings go in turn in each of %d passes; "+
		"each figure is the median of the passes (ns per packet), the ratio is to (a) at the same filling. "+
		"A test run does what the program does, helpers included: for the redirect it includes `bpf_redirect_peer` (which only records the target), "+
		"not the kernel's switch to the peer netns after the program, nor the tc hook's own cost around the program.\n\n",
		polSport, polPortAllowed, polPathNames(paths), r.firsts, polPayload, chunkRepeat, num(float64(r.chunks*chunkRepeat)),
		num(polFillIPCache), num(polFillIdentities), polRounds, r.cfg.passes)

	header := []string{"path", "packet", "(a) no policy"}
	for _, l := range polLevels {
		header = append(header, "(b) "+l.name)
	}
	var rows [][]string
	cell := func(b, a float64) string { return fmt.Sprintf("%s (%s)", f1(b), ratio(b, a)) }
	for _, p := range paths {
		for _, first := range []bool{true, false} {
			pk := "established"
			if first {
				pk = "first (SYN)"
			}
			a := r.med(0, 0, p.key, first)
			row := []string{p.key, pk, f1(a)}
			for li := range polLevels {
				row = append(row, cell(r.med(li, 1, p.key, first), r.med(li, 0, p.key, first)))
			}
			rows = append(rows, row)
		}
	}
	rows = append(rows, []string{"empty program", "one run", f1(stats.Median(r.floor)), "", "", "", ""},
		[]string{"empty program", "chunks of 250", f1(stats.Median(r.floorEst)), "", "", "", ""})
	w("%s\n", table(header, rows))

	w("(a) at each filling (it reads none of the maps the fillings grow), and the range of the passes of (a) and of (b) at 10 000 rules:\n\n")
	header = []string{"path", "packet"}
	for _, l := range polLevels {
		header = append(header, "(a) "+l.name)
	}
	header = append(header, "(a) passes", "(b) 10 000 passes")
	rows = nil
	last := len(polLevels) - 1
	for _, p := range paths {
		for _, first := range []bool{true, false} {
			pk := "established"
			if first {
				pk = "first (SYN)"
			}
			row := []string{p.key, pk}
			for li := range polLevels {
				row = append(row, f1(r.med(li, 0, p.key, first)))
			}
			sa, sb := r.v[0][0][p.key], r.v[last][1][p.key]
			if first {
				row = append(row, spread(sa.first), spread(sb.first))
			} else {
				row = append(row, spread(sa.est), spread(sb.est))
			}
			rows = append(rows, row)
		}
	}
	w("%s\n", table(header, rows))

	w("**The whole path against the target (under 150 ns)**: a pod's packet to a pod of another node runs the sender's egress program and the receiver's ingress program " +
		"(egress + ingress above, summed pass by pass); to a pod of the same node one program judges both ends (local). " +
		"The test-run floor (the empty program's figure, counted once per program) is included; the figure less it is in parentheses.\n\n")
	header = []string{"path", "packet", "(a) no policy"}
	for _, l := range polLevels {
		header = append(header, "(b) "+l.name)
	}
	header = append(header, "under 150 ns")
	rows = nil
	for _, wp := range []struct {
		name string
		keys []string
	}{{"pod → pod of another node (egress + ingress)", []string{"egress", "ingress"}}, {"pod → pod on the node (local)", []string{"local"}}} {
		for _, first := range []bool{true, false} {
			pk, floor := "established", stats.Median(r.floorEst)
			if first {
				pk, floor = "first (SYN)", stats.Median(r.floor)
			}
			floor *= float64(len(wp.keys))
			fig := func(li, st int) float64 { return stats.Median(r.whole(li, st, wp.keys, first)) }
			a := fig(0, 0)
			row := []string{wp.name, pk, fmt.Sprintf("%s (%s)", f1(a), f1(a-floor))}
			worst := 0.0
			for li := range polLevels {
				v := fig(li, 1)
				worst = max(worst, v)
				row = append(row, fmt.Sprintf("%s (%s), %s", f1(v), f1(v-floor), ratio(v, fig(li, 0))))
			}
			verdict := "yes"
			switch {
			case worst-floor >= 150:
				verdict = "**no**"
			case worst >= 150:
				verdict = "yes less the floor, not with it"
			}
			row = append(row, verdict)
			rows = append(rows, row)
		}
	}
	w("%s\n", table(header, rows))
	return b.String()
}

func polPathNames(paths []*polPath) string {
	var s []string
	for _, p := range paths {
		s = append(s, "**"+p.key+"**, "+p.name)
	}
	return strings.Join(s, "; ")
}
