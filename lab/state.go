//go:build linux

package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
)

// StateFile is the name of the file, in the lab's directory, that records
// everything the lab made, written before or right after each thing is
// made. `anet-lab down` (DownDir) reads only this file, so it can undo a
// lab whose owner crashed or was killed with SIGKILL.
const StateFile = "state.json"

// State is what a lab made, in the order it made it. Down undoes it in
// reverse: processes, mounts, namespaces, cgroups, sysctls, directories.
type State struct {
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`
	Ready   bool      `json:"ready"` // Up finished
	Owner   Proc      `json:"owner"` // the process that ran Up

	Netns    []string  `json:"netns"`    // names under /run/netns
	Mounts   []string  `json:"mounts"`   // mount points on the machine's mount namespace
	Procs    []Proc    `json:"procs"`    // started processes
	Cgroups  []string  `json:"cgroups"`  // cgroup directories made (their subtrees go too)
	Sysctls  []Sysctl  `json:"sysctls"`  // values raised, with the old value
	Routes   []Route   `json:"routes"`   // routes added in the lab's namespaces
	HostDirs []string  `json:"hostDirs"` // directories made outside Dir by older labs (removed when empty); none now
	Nodes    []NodeRec `json:"nodes"`

	ControlPlaneDir string `json:"controlPlaneDir,omitempty"`
	ControlPlaneNS  string `json:"controlPlaneNetns,omitempty"`
	APIServerURL    string `json:"apiServerURL,omitempty"`
	Kubeconfig      string `json:"kubeconfig,omitempty"` // the admin's
	// Options are those the lab was brought up with (defaults filled in),
	// for what a later command adds to it (AddNode).
	Options *Options `json:"options,omitempty"`
	// AnetdKubeconfig is anetd's: a token of the ServiceAccount the
	// shipped RBAC manifest binds (installer/manifests).
	AnetdKubeconfig  string `json:"anetdKubeconfig,omitempty"`
	KubectlPath      string `json:"kubectl,omitempty"`
	FabricNetns      string `json:"fabricNetns,omitempty"`
	OutsideNetns     string `json:"outsideNetns,omitempty"`
	CgroupV2Mount    string `json:"cgroupV2Mount,omitempty"`
	AnetBinDir       string `json:"anetBinDir,omitempty"`
	KubernetesBinDir string `json:"kubernetesBinDir,omitempty"`
	// ClusterDNS is the kube-dns Service's address, once the cluster DNS
	// is deployed (Options.DNS).
	ClusterDNS string `json:"clusterDNS,omitempty"`
}

// Route is a route the lab added in one of its network namespaces.
type Route struct {
	Netns string `json:"netns"` // name under /run/netns
	Dst   string `json:"dst"`   // a prefix
	Via   string `json:"via"`
}

// Proc is a process the lab started. Before a signal is sent, the PID must
// still run Exe and have started at Start (clock ticks since boot, field 22
// of /proc/PID/stat): a reused PID is never hit.
type Proc struct {
	Name  string `json:"name"` // e.g. "node1/kubelet", "kube-apiserver"
	PID   int    `json:"pid"`
	Exe   string `json:"exe"`
	Start uint64 `json:"start"`
	Log   string `json:"log,omitempty"`

	// How to start it again (node components).
	Argv    []string `json:"argv,omitempty"`
	Netns   string   `json:"netnsPath,omitempty"`
	MountNS string   `json:"mountNS,omitempty"`
}

// Sysctl is a machine-wide sysctl the lab changed.
type Sysctl struct {
	Key string `json:"key"` // e.g. fs.inotify.max_user_instances
	Old string `json:"old"`
	New string `json:"new"`
}

// NodeRec describes a node of the lab.
type NodeRec struct {
	Name       string `json:"name"`    // the Kubernetes node name
	Netns      string `json:"netns"`   // name under /run/netns
	Address    string `json:"address"` // underlay (fabric) address
	Dir        string `json:"dir"`
	MountNS    string `json:"mountNS"`    // file holding the node's mount namespace
	CgroupName string `json:"cgroupName"` // kubelet's cgroupRoot without the slash
	Socket     string `json:"socket"`     // anetd's
	BPFRoot    string `json:"bpfRoot"`
	StateDir   string `json:"stateDir"`
	Containerd string `json:"containerd"` // containerd's socket
	CNIBinDir  string `json:"cniBinDir"`
	CNIConfDir string `json:"cniConfDir"`
	// StaticPodDir is kubelet's staticPodPath: a pod manifest put there
	// runs as a static pod of the node (with a mirror pod in the API).
	StaticPodDir string `json:"staticPodDir,omitempty"`
	HealthAddr   string `json:"healthAddr,omitempty"`
}

// stateStore serializes updates to the state file.
type stateStore struct {
	mu   sync.Mutex
	path string
	s    State
}

// update applies f and writes the file atomically.
func (st *stateStore) update(f func(s *State)) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	f(&st.s)
	b, err := json.MarshalIndent(&st.s, "", "  ")
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(st.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

func (st *stateStore) get() State {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.s
}

// LoadState reads the state file of the lab in dir. A missing file is
// reported as an error wrapping os.ErrNotExist.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, StateFile), err)
	}
	return &s, nil
}

// lockDir takes an exclusive, non-blocking lock on dir/.lock, so that two
// anet-lab commands never work on one lab at once. The lock dies with its
// holder.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another anet-lab command is working on %s", dir)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
