package images

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCtrImport imports an image into a throwaway containerd (own root,
// state and sockets in a temporary directory, CRI plugin disabled, own
// mount namespace) with the same command the lab uses. It runs only where
// Debian's containerd package is installed (containerd and ctr on PATH)
// and we are root, and is skipped otherwise; a containerd that is there
// but does not start or answer fails it.
func TestCtrImport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a containerd")
	}
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
	containerd, err1 := exec.LookPath("containerd")
	ctr, err2 := exec.LookPath("ctr")
	if err1 != nil || err2 != nil {
		t.Skip("containerd and ctr are not installed (apt-get install containerd)")
	}

	bin := tinyBinary(t)
	dir := t.TempDir()
	image := filepath.Join(dir, "hello.tar")
	if err := BuildBinaryImage(bin, "anet-hello:v1", nil, image); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = %[5]q

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[6]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc",
		filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	cmd := exec.Command(containerd, "--config", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// A private mount namespace: whatever containerd mounts while
	// unpacking goes away with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	defer stop()

	ctrRun := func(args ...string) (string, error) {
		out, err := exec.Command(ctr, append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	up := false
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := ctrRun("version"); err == nil {
			up = true
			break
		}
	}
	if !up {
		stop()
		t.Fatalf("throwaway containerd did not come up; its log:\n%s", logs.String())
	}

	if out, err := ctrRun("images", "import", image); err != nil {
		t.Fatalf("ctr images import: %v\n%s\ncontainerd log:\n%s", err, out, logs.String())
	}
	out, err := ctrRun("images", "ls", "-q")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	if !strings.Contains(out, "docker.io/library/anet-hello:v1") {
		t.Errorf("imported images: %q, want docker.io/library/anet-hello:v1", out)
	}
	stop()
}
