package apiserver

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/daemon/api"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// post sends one ADD request with fds attached to its first bytes and
// returns the HTTP status and body.
func post(t *testing.T, sock, body string, fds ...int) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := fmt.Sprintf("POST /v1/endpoints HTTP/1.1\r\nHost: anetd\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.(*net.UnixConn).WriteMsgUnix([]byte(req), oob, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A large request goes in parts; the server may answer and close
	// before it has read them all (a body over the limit): the answer is
	// what counts.
	_, _ = c.Write([]byte(req)[n:])
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String()
}

// Bad ADD requests get a clear 400 before anything is done, and every
// descriptor they carried is closed. (The server is never handed a
// manager: a request that got as far as Add would crash the test.)
func TestAddBadRequests(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "anetd.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(nil, func() api.Status { return api.Status{Ready: true} }, slog.Default())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })

	file, err := os.Create(filepath.Join(dir, "regular"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var pipe [2]int
	if err := unix.Pipe(pipe[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	mntNS, err := os.Open("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	defer mntNS.Close()
	ownNet, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ownNet.Close()
	good := `{"containerID":"c1","ifName":"eth0","network":"anet","netns":"/x"}`
	fd := func(f *os.File) int { return int(f.Fd()) }
	cases := []struct {
		name, body, want string
		fds              []int
	}{
		{"no descriptor", good, "as one file descriptor, got 0", nil},
		{"two descriptors", good, "got 2", []int{fd(file), pipe[0]}},
		{"five descriptors", good, "too many file descriptors", []int{fd(file), fd(file), fd(file), fd(file), fd(file)}},
		{"a regular file", good, "not a namespace", []int{fd(file)}},
		{"a pipe", good, "not a namespace", []int{pipe[0]}},
		{"a mount namespace", good, "not a network namespace", []int{fd(mntNS)}},
		{"the node's own network namespace", good, "the node's own", []int{fd(ownNet)}},
		{"bad JSON", `{"containerID":`, "decoding request", []int{fd(file)}},
		{"unknown field", `{"containerID":"c1","ifName":"eth0","bogus":1}`, "unknown field", []int{fd(file)}},
		{"bad container ID", `{"containerID":"-x","ifName":"eth0"}`, "not a valid container ID", []int{fd(file)}},
		{"bad MTU", `{"containerID":"c1","ifName":"eth0","mtu":20}`, "mtu 20", []int{fd(file)}},
		{"a body over 1 MiB", `{"containerID":"` + strings.Repeat("c", api.MaxBody) + `"}`, "exceeds 1048576 bytes", []int{fd(file)}},
	}
	before := openFDs(t)
	for _, c := range cases {
		code, body := post(t, sock, c.body, c.fds...)
		if code != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s; want 400 saying %q", c.name, code, strings.TrimSpace(body), c.want)
		}
	}
	// The server closes what it was sent (after the connection ends).
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open after the requests, %d before: the server leaks what it is sent", after, before)
	}
}
