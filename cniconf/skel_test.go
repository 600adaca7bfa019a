package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// fakePluginEnv makes the test binary act as a minimal skel-based plugin
// that calls Parse the way anet-cni is expected to (see the package doc).
const fakePluginEnv = "ANET_CNICONF_FAKE_PLUGIN"

// errAccepted is what the fake plugin answers when Parse accepts the
// config: it never goes on to touch a network namespace.
const errAccepted = "fake plugin: config accepted"

func TestMain(m *testing.M) {
	if os.Getenv(fakePluginEnv) == "1" {
		fakePluginMain()
		return
	}
	os.Exit(m.Run())
}

func fakePluginMain() {
	cmd := func(args *skel.CmdArgs) error {
		if _, err := Parse(args.StdinData); err != nil {
			var ce *ConfigError
			if errors.As(err, &ce) {
				return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
			}
			return err
		}
		return errors.New(errAccepted)
	}
	// The range anet-cni supports: 0.4.0 to 1.1.0.
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmd, Del: cmd, Check: cmd},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "cniconf fake plugin")
}

// TestExpectTSVWithSkel runs every case of expect.tsv through skel (the
// version in go.mod) and Parse, as the real plugin will, and checks the
// CNI error code and that the message contains the substring. It pins
// the codes that skel decides before the plugin runs (6 for input that
// does not decode, 1 for versions out of range or missing).
func TestExpectTSVWithSkel(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the test binary once per case")
	}
	for _, c := range readExpect(t) {
		for _, verb := range []string{"ADD", "DEL"} {
			t.Run(c.name+"/"+verb, func(t *testing.T) {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = []string{
					fakePluginEnv + "=1",
					"CNI_COMMAND=" + verb,
					"CNI_CONTAINERID=cniconf-test",
					"CNI_NETNS=/var/run/netns/cniconf-test-does-not-exist",
					"CNI_IFNAME=eth0",
					"CNI_PATH=/nonexistent",
				}
				cmd.Stdin = bytes.NewReader(c.data)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var exitErr *exec.ExitError
				if !errors.As(err, &exitErr) {
					t.Fatalf("fake plugin: want a non-zero exit, got %v; stdout %q stderr %q", err, &stdout, &stderr)
				}
				var res types.Error
				if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
					t.Fatalf("decoding the plugin's error %q: %v", &stdout, err)
				}
				if res.Msg == errAccepted {
					t.Fatalf("the config was accepted, want code %d", c.code)
				}
				if int(res.Code) != c.code {
					t.Errorf("code %d (%s), want %d", res.Code, res.Error(), c.code)
				}
				if !strings.Contains(res.Msg, c.substring) {
					t.Errorf("msg %q does not contain %q", res.Msg, c.substring)
				}
			})
		}
	}
}
