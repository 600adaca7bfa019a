package apiserver

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/daemon/api"
)

// Steps of an ADD in the handler, before the endpoint manager's (see
// endpoint.Add), for the trace.
const (
	StepReceived = "received" // the request reached the handler: connect, send, accept, headers (from the client's clock)
	StepDecoded  = "decoded"  // the body decoded, the netns descriptor taken and checked
	// StepPolicy, after the endpoint manager's steps: the wait for the
	// pod's NetworkPolicy (only when a policy is in its namespace).
	StepPolicy = "policy"
)

// addEndpoint does a whole ADD; the pod's network namespace arrives as the
// one file descriptor of the request's connection.
func (s *Server) addEndpoint(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var trace []api.TraceStep
	if sent, err := strconv.ParseInt(r.Header.Get(api.SentHeader), 10, 64); err == nil {
		trace = append(trace, api.TraceStep{Step: StepReceived, Micros: start.Sub(time.Unix(0, sent)).Microseconds()})
	}
	var req api.AddRequest
	if err := api.Decode(r.Body, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	files, err := api.ReceivedFiles(r.Context())
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %v", api.ErrInvalid, err))
		return
	}
	if len(files) != 1 {
		s.fail(w, r, fmt.Errorf("%w: ADD needs the pod's network namespace as one file descriptor, got %d", api.ErrInvalid, len(files)))
		return
	}
	if err := isNetns(files[0]); err != nil {
		s.fail(w, r, fmt.Errorf("%w: %v", api.ErrInvalid, err))
		return
	}
	trace = append(trace, api.TraceStep{Step: StepDecoded, Micros: time.Since(start).Microseconds()})
	res, err := s.eps.Add(r.Context(), req, files[0])
	if err != nil {
		s.fail(w, r, err)
		return
	}
	res.Trace = append(trace, res.Trace...)
	if waited, d := s.waitPolicy(r, req.Pod); waited {
		res.Trace = append(res.Trace, api.TraceStep{Step: StepPolicy, Micros: d.Microseconds()})
	}
	s.reply(w, res)
}

// isNetns checks that f is a network namespace (nsfs, and setns takes it as
// CLONE_NEWNET: asked of the kernel with the NS_GET_NSTYPE ioctl).
func isNetns(f *os.File) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("the descriptor sent: %v", err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("the descriptor sent is not a namespace")
	}
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("the descriptor sent: NS_GET_NSTYPE: %v", err)
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("the descriptor sent is not a network namespace")
	}
	// anetd's own namespace (the node's) is no pod's: wiring a "pod"
	// there would put its address and routes on the node.
	var got, own unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &got); err != nil {
		return fmt.Errorf("the descriptor sent: %v", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &own); err != nil {
		return fmt.Errorf("anetd's own network namespace: %v", err)
	}
	if got.Dev == own.Dev && got.Ino == own.Ino {
		return fmt.Errorf("the network namespace sent is the node's own, not a pod's")
	}
	return nil
}
