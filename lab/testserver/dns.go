package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsResult is what the dns probe prints, one JSON object.
type dnsResult struct {
	Name   string `json:"name"`
	Server string `json:"server,omitempty"` // --server's; empty: the pod's resolver
	// RCode of the answer with --server: NOERROR, NXDOMAIN, SERVFAIL,
	// REFUSED, ...
	RCode         string   `json:"rcode,omitempty"`
	Authoritative bool     `json:"authoritative,omitempty"`
	Addresses     []string `json:"addresses"`
	Millis        float64  `json:"ms"` // from sending to the answer
}

// dnsMain runs the dns probe: 0 = an answer came (whatever its rcode with
// --server; with the pod's resolver, the name resolved), 1 = none, 2 =
// usage error.
//
// With --server it sends exactly one UDP query for the A records of --name
// (recursion desired, no retransmission, no search list: the name is taken
// as fully qualified) and prints the answer's rcode and addresses. Without
// it, it resolves --name as a program of the pod does, with the pod's
// /etc/resolv.conf (kubelet's: the cluster DNS, the search list, ndots).
func dnsMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the name to resolve")
	server := fs.String("server", "", "ask this server (IP:PORT) one UDP query; default: the pod's resolver")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "anet-testserver dns: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected arguments %q", fs.Args())
	}
	if *name == "" {
		return usageErr("--name is required")
	}
	if *timeout <= 0 {
		return usageErr("--timeout must be positive")
	}
	if *server != "" {
		if _, err := netip.ParseAddrPort(*server); err != nil {
			return usageErr("--server must be IP:PORT: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var res *dnsResult
	var err error
	if *server != "" {
		res, err = queryA(ctx, *server, *name)
	} else {
		res, err = resolve(ctx, *name)
	}
	if err != nil {
		fmt.Fprintf(stderr, "anet-testserver dns: %s: %v\n", *name, err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

// resolve looks name up with the pod's resolver (Go's, reading
// /etc/resolv.conf and /etc/hosts of the pod).
func resolve(ctx context.Context, name string) (*dnsResult, error) {
	r := &net.Resolver{PreferGo: true}
	t0 := time.Now()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return nil, err
	}
	return &dnsResult{Name: name, Addresses: addrs, Millis: ms(time.Since(t0))}, nil
}

// queryA sends one query for the A records of name to server and reads
// its answer.
func queryA(ctx context.Context, server, name string) (*dnsResult, error) {
	fqdn := name
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	qn, err := dnsmessage.NewName(fqdn)
	if err != nil {
		return nil, fmt.Errorf("name: %w", err)
	}
	id := uint16(rand.Uint32())
	q, err := (&dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: qn, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}).Pack()
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if _, err := c.Write(q); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, errors.New("no answer before the timeout")
			}
			return nil, fmt.Errorf("receive: %w", err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(buf[:n]); err != nil || m.ID != id || !m.Response ||
			len(m.Questions) != 1 || !strings.EqualFold(m.Questions[0].Name.String(), fqdn) {
			continue // not the answer to our query
		}
		res := &dnsResult{Name: name, Server: server, RCode: rcodeName(m.RCode), Authoritative: m.Authoritative,
			Addresses: []string{}, Millis: ms(time.Since(t0))}
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				res.Addresses = append(res.Addresses, netip.AddrFrom4(r.A).String())
			}
		}
		return res, nil
	}
}

// rcodeName spells an rcode as dig does.
func rcodeName(rc dnsmessage.RCode) string {
	switch rc {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	}
	return fmt.Sprintf("RCODE%d", rc)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
