package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as anet-testserver: with helperEnv set it runs
// the command line it was given instead of the tests.
const helperEnv = "ANET_TESTSERVER_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "pause":
		// pause, announcing on stderr when the handlers are installed so
		// that the test does not signal too early.
		os.Exit(pause(func() { fmt.Fprintln(os.Stderr, "ready") }))
	default:
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// helper returns a command running the test binary as anet-testserver.
func helper(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// GORACE: under -race, do not sleep a second at exit.
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
	return cmd
}

// listeners holds the addresses serve printed.
type listeners map[string]string

// readReady consumes serve's stderr up to "ready" and returns the bound
// addresses; the rest of stderr is drained in the background.
func readReady(t *testing.T, r io.Reader) listeners {
	t.Helper()
	type result struct {
		ls  listeners
		err error
	}
	done := make(chan result, 1)
	go func() {
		ls := listeners{}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				done <- result{ls: ls}
				io.Copy(io.Discard, r)
				return
			}
			if f := strings.Fields(line); len(f) == 3 && f[0] == "listening" {
				ls[f[1]] = f[2]
				continue
			}
			t.Logf("serve: %s", line)
		}
		done <- result{err: fmt.Errorf("serve's stderr ended before ready: %v", sc.Err())}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatal(res.err)
		}
		return res.ls
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not become ready")
	}
	return nil
}

var loopbackArgs = []string{"--http", "127.0.0.1:0", "--tcp-echo", "127.0.0.1:0", "--udp-echo", "127.0.0.1:0"}

// startServe runs serve in this process on loopback ephemeral ports and
// stops it at the end of the test.
func startServe(t *testing.T, args ...string) listeners {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	status := make(chan int, 1)
	go func() {
		status <- serveMain(ctx, func() {}, args, pw)
		pw.Close()
	}()
	ls := readReady(t, pr)
	t.Cleanup(func() {
		cancel()
		select {
		case s := <-status:
			if s != 0 {
				t.Errorf("serve exited %d after cancel, want 0", s)
			}
		case <-time.After(5 * time.Second):
			t.Error("serve did not stop after cancel")
		}
	})
	return ls
}

func connect(args ...string) (status int, stdout, stderr string) {
	var o, e bytes.Buffer
	status = connectMain(args, &o, &e)
	return status, o.String(), e.String()
}

func TestServeAndConnect(t *testing.T) {
	t.Setenv("POD_NAME", "pod-under-test")
	ls := startServe(t, loopbackArgs...)
	for _, kind := range []string{"http", "tcp-echo", "udp-echo"} {
		host, port, err := net.SplitHostPort(ls[kind])
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("serve printed %s address %q, want 127.0.0.1:<port>", kind, ls[kind])
		}
	}

	t.Run("http", func(t *testing.T) {
		status, out, errOut := connect("--protocol", "http", "--address", ls["http"], "--timeout", "2s")
		if status != 0 {
			t.Fatalf("connect http = %d, stderr %q", status, errOut)
		}
		var resp struct{ Pod, Client, Host string }
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("body %q: %v", out, err)
		}
		host, _ := os.Hostname()
		if resp.Pod != "pod-under-test" || resp.Host != host {
			t.Errorf("body %q: want pod %q and host %q", out, "pod-under-test", host)
		}
		if h, p, err := net.SplitHostPort(resp.Client); err != nil || h != "127.0.0.1" || p == "0" {
			t.Errorf("client %q, want 127.0.0.1:<port>", resp.Client)
		}
	})
	t.Run("healthz", func(t *testing.T) {
		status, out, errOut := connect("--protocol", "http", "--address", ls["http"], "--path", "/healthz")
		if status != 0 || out != "ok" {
			t.Fatalf("connect http /healthz = %d %q, stderr %q", status, out, errOut)
		}
	})
	t.Run("http-404", func(t *testing.T) {
		status, _, errOut := connect("--protocol", "http", "--address", ls["http"], "--path", "/nothing-here")
		if status != 1 || !strings.Contains(errOut, "404") {
			t.Fatalf("connect http /nothing-here = %d, stderr %q; want 1 and a 404", status, errOut)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		if status, _, errOut := connect("--protocol", "tcp", "--address", ls["tcp-echo"]); status != 0 {
			t.Fatalf("connect tcp = %d, stderr %q", status, errOut)
		}
	})
	t.Run("udp", func(t *testing.T) {
		if status, _, errOut := connect("--protocol", "udp", "--address", ls["udp-echo"]); status != 0 {
			t.Fatalf("connect udp = %d, stderr %q", status, errOut)
		}
	})
	t.Run("tcp-echo", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", ls["tcp-echo"], 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		msg := []byte("hello, echo\n")
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo = %q, %v; want %q", got, err, msg)
		}
	})
	t.Run("method", func(t *testing.T) {
		client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 2 * time.Second}
		resp, err := client.Post("http://"+ls["http"]+"/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST / = %s, want 405", resp.Status)
		}
	})
}

func TestServeOnlySome(t *testing.T) {
	ls := startServe(t, "--http", "", "--tcp-echo", "127.0.0.1:0", "--udp-echo", "")
	if len(ls) != 1 || ls["tcp-echo"] == "" {
		t.Fatalf("listeners %v, want only tcp-echo", ls)
	}
}

// closedPort returns a loopback port that nothing listens on for TCP nor
// UDP (it was just bound and released).
func closedPort(t *testing.T) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue // taken for UDP: try another
		}
		pc.Close()
		return addr
	}
	t.Fatal("no free loopback port")
	return ""
}

// TestConnectFails runs the probe as a process against a closed loopback
// port and expects exit status 1 with a reason on stderr.
func TestConnectFails(t *testing.T) {
	addr := closedPort(t)
	for _, proto := range []string{"tcp", "udp", "http"} {
		t.Run(proto, func(t *testing.T) {
			cmd := helper(t, "run", "connect", "--protocol", proto, "--address", addr, "--timeout", "1s")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("connect %s %s: %v, want exit status 1", proto, addr, err)
			}
			if !strings.Contains(stderr.String(), addr) {
				t.Errorf("stderr %q does not give the reason", stderr.String())
			}
		})
	}
}

func TestConnectUDPTimeout(t *testing.T) {
	// A bound socket that never answers: the probe must give up at the
	// timeout rather than at the first read.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	status, _, errOut := connect("--protocol", "udp", "--address", pc.LocalAddr().String(), "--timeout", "300ms")
	if status != 1 || !strings.Contains(errOut, "timeout") {
		t.Fatalf("connect udp to a silent socket = %d, stderr %q; want 1 and a timeout", status, errOut)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("gave up after %v, want about 300ms", d)
	}
	buf := make([]byte, 1024)
	pc.SetReadDeadline(time.Now().Add(time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "anet-testserver probe ") {
		t.Errorf("silent socket received %q, %v", buf[:n], err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"connect"},
		{"connect", "--address", "127.0.0.1"},
		{"connect", "--address", "127.0.0.1:1", "--protocol", "sctp"},
		{"connect", "--address", "127.0.0.1:1", "--timeout", "0s"},
		{"serve", "--http", "", "--tcp-echo", "", "--udp-echo", ""},
		{"serve", "extra"},
		{"pause", "extra"},
		{"frobnicate"},
	} {
		if status := run(args, io.Discard, io.Discard); status != 2 {
			t.Errorf("run %q = %d, want 2", args, status)
		}
	}
}

// waitExit waits for cmd with a deadline and returns its exit status.
func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if ee != nil && ee.ExitCode() < 0 {
			t.Fatalf("killed: %v", err)
		}
		return cmd.ProcessState.ExitCode()
	case <-time.After(within):
		cmd.Process.Kill()
		<-done
		t.Fatalf("did not exit within %v", within)
	}
	return -1
}

// TestServeSIGTERM runs serve as a process, probes it and stops it with
// SIGTERM: it must exit 0 promptly.
func TestServeSIGTERM(t *testing.T) {
	cmd := helper(t, "run", append([]string{"serve"}, loopbackArgs...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ls := readReady(t, stderr)
	for proto, kind := range map[string]string{"http": "http", "tcp": "tcp-echo", "udp": "udp-echo"} {
		if status, _, errOut := connect("--protocol", proto, "--address", ls[kind]); status != 0 {
			t.Errorf("connect %s = %d, stderr %q", proto, status, errOut)
		}
	}
	// An open echo connection must not hold the shutdown up.
	c, err := net.Dial("tcp", ls["tcp-echo"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if status := waitExit(t, cmd, 5*time.Second); status != 0 {
		t.Fatalf("serve exited %d after SIGTERM, want 0", status)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("serve took %v to stop", d)
	}
}

func startPause(t *testing.T, attr *syscall.SysProcAttr) *exec.Cmd {
	t.Helper()
	cmd := helper(t, "pause")
	cmd.SysProcAttr = attr
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if attr != nil {
			t.Skipf("cannot start pause in a new PID namespace: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("pause said %q, %v", line, err)
	}
	return cmd
}

func TestPause(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := startPause(t, nil)
			cmd.Process.Signal(sig)
			if status := waitExit(t, cmd, 5*time.Second); status != 0 {
				t.Fatalf("pause exited %d after %v, want 0", status, sig)
			}
		})
	}
}

// children returns the processes whose parent is ppid, with their state.
func children(t *testing.T, ppid int) map[int]string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	kids := map[int]string{}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if pp, _ := strconv.Atoi(f[1]); pp == ppid {
			pid, _ := strconv.Atoi(strings.Fields(s)[0])
			kids[pid] = f[0]
		}
	}
	return kids
}

// TestPauseReapsAsPID1 runs pause as PID 1 of a new PID namespace, orphans
// a process into that namespace (nsenter runs sh there, sh backgrounds a
// sleep and exits, so the sleep is reparented to pause) and checks that
// the sleep does not stay a zombie once it exits.
func TestPauseReapsAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Skip("needs nsenter")
	}
	cmd := startPause(t, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID})
	pid := cmd.Process.Pid

	out, err := exec.Command(nsenter, "--target", strconv.Itoa(pid), "--pid", "--",
		"/bin/sh", "-c", "sleep 0.5 </dev/null >/dev/null 2>&1 & exit 0").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v %s", err, out)
	}
	kids := children(t, pid)
	if len(kids) != 1 {
		t.Fatalf("children of pause right after the orphaning: %v, want one sleep", kids)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(kids) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("children of pause still there (pid: state): %v", kids)
		}
		time.Sleep(50 * time.Millisecond)
		kids = children(t, pid)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if status := waitExit(t, cmd, 5*time.Second); status != 0 {
		t.Fatalf("pause (PID 1) exited %d after SIGTERM, want 0", status)
	}
}

// --hold keeps one connection echoing; --repeat makes new connections and
// stops at the first failure.
func TestConnectHoldAndRepeat(t *testing.T) {
	ls := startServe(t, loopbackArgs...)
	status, out, errOut := connect("--protocol", "tcp", "--address", ls["tcp-echo"], "--hold", "500ms")
	if status != 0 || !strings.Contains(out, "connected ") || !strings.Contains(out, "held 500ms with") {
		t.Fatalf("hold: status %d, stdout %q, stderr %q", status, out, errOut)
	}
	if status, out, errOut = connect("--protocol", "http", "--address", ls["http"], "--repeat", "5", "--interval", "10ms"); status != 0 {
		t.Fatalf("repeat: status %d, stderr %q", status, errOut)
	}
	if n := strings.Count(out, `"pod"`); n != 5 {
		t.Errorf("repeat printed %d answers, want 5: %q", n, out)
	}
	// Holding a connection to a port that does not echo fails.
	if status, _, _ = connect("--protocol", "tcp", "--address", ls["http"], "--hold", "300ms", "--timeout", "200ms"); status != 1 {
		t.Errorf("hold against a server that does not echo: status %d, want 1", status)
	}
	closed := closedPort(t)
	status, _, errOut = connect("--protocol", "tcp", "--address", closed, "--repeat", "3")
	if status != 1 || !strings.Contains(errOut, "probe 1 of 3") {
		t.Errorf("repeat against a closed port: status %d, stderr %q", status, errOut)
	}
	if status, _, _ = connect("--protocol", "http", "--address", ls["http"], "--hold", "1s"); status != 2 {
		t.Errorf("--hold with http: status %d, want 2 (usage)", status)
	}
	// A connected UDP socket held against the echo: every datagram comes
	// back, no reconnect.
	status, out, errOut = connect("--protocol", "udp", "--address", ls["udp-echo"], "--hold", "1s")
	if status != 0 || !strings.Contains(out, "held 1s: ") || !strings.Contains(out, " 0 lost, 0 reconnects") {
		t.Errorf("udp hold: status %d, stdout %q, stderr %q", status, out, errOut)
	}
	// Against a UDP port nobody listens on, the socket reports the ICMP
	// port unreachable: it connects again each time, and fails at the end.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noUDP := pc.LocalAddr().String()
	pc.Close()
	status, out, _ = connect("--protocol", "udp", "--address", noUDP, "--hold", "600ms")
	if status != 1 || !strings.Contains(out, " after 0 echoes: ") || !strings.Contains(out, "connection refused") {
		t.Errorf("udp hold against a closed port: status %d, stdout %q", status, out)
	}
}

// TestConnectSourcePort: --source-port connects from that port, again and
// again (SO_REUSEADDR: the last connection's TIME_WAIT does not hold it).
func TestConnectSourcePort(t *testing.T) {
	ls := startServe(t, loopbackArgs...)
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port // free, as far as the kernel knows
	l.Close()
	for i := range 2 {
		status, out, errOut := connect("--protocol", "http", "--address", ls["http"], "--source-port", strconv.Itoa(port))
		// The first connection's end may be in TIME_WAIT on this side:
		// Linux lets a connect() take its 4-tuple again (tcp_tw_reuse,
		// on for loopback) only once its last timestamp is over a second
		// old, and refuses with EADDRNOTAVAIL before.
		for deadline := time.Now().Add(5 * time.Second); i > 0 && status != 0 && strings.Contains(errOut, "cannot assign requested address") && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			status, out, errOut = connect("--protocol", "http", "--address", ls["http"], "--source-port", strconv.Itoa(port))
		}
		if status != 0 {
			t.Fatalf("connect %d = %d, stderr %q", i, status, errOut)
		}
		var resp struct{ Client string }
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("body %q: %v", out, err)
		}
		if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)); resp.Client != want {
			t.Errorf("connect %d: the server saw client %s, want %s", i, resp.Client, want)
		}
	}
	for _, proto := range []string{"tcp", "udp"} {
		if status, _, errOut := connect("--protocol", proto, "--address", ls[proto+"-echo"], "--source-port", strconv.Itoa(port)); status != 0 {
			t.Errorf("connect %s from port %d = %d, stderr %q", proto, port, status, errOut)
		}
	}
	if status, _, _ := connect("--protocol", "tcp", "--address", ls["tcp-echo"], "--source-port", "70000"); status != 2 {
		t.Errorf("--source-port 70000: status %d, want 2 (usage)", status)
	}
}
