package main

import (
	"bytes"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// fakeDNS answers every query on a loopback UDP socket with reply(query),
// after first sending a datagram that is not the answer (another ID), which
// the probe must skip. nil from reply: no answer at all.
func fakeDNS(t *testing.T, reply func(q dnsmessage.Message) *dnsmessage.Message) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if err := q.Unpack(buf[:n]); err != nil {
				continue
			}
			m := reply(q)
			if m == nil {
				continue
			}
			stray := *m
			stray.ID = q.ID + 1
			for _, r := range []*dnsmessage.Message{&stray, m} {
				if b, err := r.Pack(); err == nil {
					_, _ = pc.WriteTo(b, from)
				}
			}
		}
	}()
	return pc.LocalAddr().String()
}

func answer(q dnsmessage.Message, rc dnsmessage.RCode, ips ...[4]byte) *dnsmessage.Message {
	m := &dnsmessage.Message{
		Header:    dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true, RCode: rc},
		Questions: q.Questions,
	}
	for _, ip := range ips {
		m.Answers = append(m.Answers, dnsmessage.Resource{
			Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
			Body:   &dnsmessage.AResource{A: ip},
		})
	}
	return m
}

func TestDNSProbe(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	srv := fakeDNS(t, func(q dnsmessage.Message) *dnsmessage.Message {
		name := q.Questions[0].Name.String()
		mu.Lock()
		asked = append(asked, name)
		mu.Unlock()
		switch name {
		case "kubernetes.default.svc.cluster.local.":
			if !q.RecursionDesired || q.Questions[0].Type != dnsmessage.TypeA {
				return answer(q, dnsmessage.RCodeFormatError)
			}
			return answer(q, dnsmessage.RCodeSuccess, [4]byte{10, 96, 0, 1}, [4]byte{10, 96, 0, 2})
		case "example.com.":
			return answer(q, dnsmessage.RCodeRefused)
		}
		return nil
	})
	for _, tc := range []struct {
		name, rcode string
		addrs       []string
	}{
		{"kubernetes.default.svc.cluster.local", "NOERROR", []string{"10.96.0.1", "10.96.0.2"}},
		{"example.com.", "REFUSED", []string{}},
	} {
		var out, errb bytes.Buffer
		if code := run([]string{"dns", "--server", srv, "--name", tc.name}, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d: %s", tc.name, code, errb.String())
		}
		var res dnsResult
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("%s: %v: %q", tc.name, err, out.String())
		}
		if res.RCode != tc.rcode || strings.Join(res.Addresses, ",") != strings.Join(tc.addrs, ",") || !res.Authoritative || res.Server != srv {
			t.Errorf("%s: got %+v, want rcode %s, addresses %v", tc.name, res, tc.rcode, tc.addrs)
		}
	}
	mu.Lock()
	if len(asked) != 2 {
		t.Errorf("the server was asked %d queries (%v), want one per probe", len(asked), asked)
	}
	mu.Unlock()

	// No answer: exit 1 after the timeout, one query sent.
	t0 := time.Now()
	var errb bytes.Buffer
	if code := run([]string{"dns", "--server", srv, "--name", "silent.test", "--timeout", "300ms"}, &bytes.Buffer{}, &errb); code != 1 {
		t.Errorf("unanswered: exit %d, want 1: %s", code, errb.String())
	}
	if d := time.Since(t0); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("unanswered: gave up after %v, want the 300ms timeout", d)
	}
	if !strings.Contains(errb.String(), "no answer") {
		t.Errorf("unanswered: %q does not say so", errb.String())
	}
}

func TestDNSProbeUsage(t *testing.T) {
	for _, args := range [][]string{
		{"dns"},
		{"dns", "--name", "x", "--server", "10.96.0.10"},
		{"dns", "--name", "x", "--timeout", "0s"},
		{"dns", "--name", "x", "extra"},
	} {
		if code := run(args, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}
