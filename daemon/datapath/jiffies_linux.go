package datapath

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The pod programs' conntrack clock (bpf/lib/policy.h, pol_now) reads
// jiffies, which the verifier inlines as a load, instead of calling
// bpf_ktime_get_coarse_ns: on our machines a helper call and its return
// cost 25-30 ns of an established packet's ~200 (the kernel's return-thunk
// mitigations), and the clock is read on every packet. The programs keep
// their expiries on CLOCK_MONOTONIC all the same, where anetd collects
// them (Monotonic): the loader gives them the tick (TICK_NSEC, from the
// kernel's CONFIG_HZ) and the offset between jiffies * tick and
// CLOCK_MONOTONIC, measured here once per process. The kernel advances
// jiffies one TICK_NSEC of CLOCK_MONOTONIC at a time (tick_do_update_jiffies64),
// so the offset holds until reboot. Should the tick be unknown (no kernel
// config to read) or the measurement disagree with it, the constants stay
// 0 and the programs call bpf_ktime_get_coarse_ns as before.

// jiffyClock is jiffies * tickNS - base = CLOCK_MONOTONIC, to within a tick.
type jiffyClock struct {
	tickNS, base uint64
}

var (
	jiffyOnce  sync.Once
	jiffyClk   jiffyClock
	jiffyError error
)

// theJiffyClock measures the clock once per process.
func theJiffyClock() (jiffyClock, error) {
	jiffyOnce.Do(func() {
		hz, err := kernelHZ()
		if err != nil {
			jiffyError = err
			return
		}
		jiffyClk, jiffyError = measureJiffyClock(hz)
	})
	return jiffyClk, jiffyError
}

// kernelHZ reads CONFIG_HZ from the running kernel's configuration.
func kernelHZ() (int, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return 0, err
	}
	release := string(bytes.TrimRight(uts.Release[:], "\x00"))
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var r io.Reader = f
		if path == "/proc/config.gz" {
			if r, err = gzip.NewReader(f); err != nil {
				f.Close()
				continue
			}
		}
		hz, err := configHZ(r)
		f.Close()
		if err == nil {
			return hz, nil
		}
	}
	return 0, errors.New("no kernel configuration with CONFIG_HZ (/proc/config.gz, /boot/config-" + release + ")")
}

func configHZ(r io.Reader) (int, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if v, ok := bytes.CutPrefix(s.Bytes(), []byte("CONFIG_HZ=")); ok {
			hz, err := strconv.Atoi(string(v))
			if err != nil || hz <= 0 || hz > 10000 {
				return 0, fmt.Errorf("CONFIG_HZ=%s", v)
			}
			return hz, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CONFIG_HZ")
}

// measureJiffyClock finds the offset at a jiffy's start: it reads jiffies
// (through test runs of two tiny programs) until it moves on, and takes
// the change to have happened between the last read of the old value and
// the first of the new, for three changes in a row. It then checks the
// clock against CLOCK_MONOTONIC 50 ms later: a wrong tick (a stale
// /boot config; the HZ choices of x86 and arm64, 100, 250, 300 and 1000,
// are 20 % apart or more) shows there.
func measureJiffyClock(hz int) (jiffyClock, error) {
	tick := (uint64(time.Second) + uint64(hz)/2) / uint64(hz) // the kernel's TICK_NSEC
	prog := func(shift bool) (*ebpf.Program, error) {
		insns := asm.Instructions{asm.FnJiffies64.Call()}
		if shift {
			insns = append(insns, asm.RSh.Imm(asm.R0, 32))
		}
		return ebpf.NewProgram(&ebpf.ProgramSpec{Name: "anet_jiffies", Type: ebpf.SchedCLS, License: "GPL",
			Instructions: append(insns, asm.Return())})
	}
	lo, err := prog(false)
	if err != nil {
		return jiffyClock{}, fmt.Errorf("loading the jiffies probe: %w", err)
	}
	defer lo.Close()
	hi, err := prog(true)
	if err != nil {
		return jiffyClock{}, fmt.Errorf("loading the jiffies probe: %w", err)
	}
	defer hi.Close()
	pkt := make([]byte, 64)
	run := func(p *ebpf.Program) (uint64, error) {
		v, err := p.Run(&ebpf.RunOptions{Data: pkt})
		return uint64(v), err
	}
	jiffies := func() (uint64, error) {
		for {
			h1, err := run(hi)
			if err != nil {
				return 0, err
			}
			l, err := run(lo)
			if err != nil {
				return 0, err
			}
			h2, err := run(hi)
			if err != nil {
				return 0, err
			}
			if h1 == h2 {
				return h1<<32 | l, nil
			}
		}
	}
	// read is one reading of jiffies between two of CLOCK_MONOTONIC.
	read := func() (before, j, after uint64, err error) {
		before = Monotonic()
		j, err = jiffies()
		return before, j, Monotonic(), err
	}
	const window = uint64(200 * time.Microsecond) // a change located more loosely is measured again
	// transition waits for the next change of jiffies and returns the
	// offset it gives, or 0 when it could not locate it within window.
	transition := func() (uint64, error) {
		prevBefore, j0, _, err := read()
		if err != nil {
			return 0, err
		}
		for deadline := prevBefore + 3*tick; ; {
			before, j, after, err := read()
			if err != nil {
				return 0, err
			}
			if j == j0 {
				if before > deadline {
					return 0, nil // preempted, or not the tick it should be
				}
				prevBefore = before
				continue
			}
			if j == j0+1 && after-prevBefore <= window {
				return j*tick - (prevBefore+after)/2, nil
			}
			return 0, nil
		}
	}
	err = fmt.Errorf("jiffies at CONFIG_HZ=%d: no tick located within %v in 10 tries", hz, time.Duration(window))
	for range 10 {
		// The kernel moves jiffies in the tick's interrupt, which may
		// come late: the earliest of three changes (the largest offset)
		// is the closest to the tick's own time.
		var base uint64
		for range 3 {
			b, terr := transition()
			if terr != nil {
				return jiffyClock{}, terr
			}
			base = max(base, b)
		}
		if base == 0 {
			continue
		}
		c := jiffyClock{tickNS: tick, base: base}
		time.Sleep(50 * time.Millisecond)
		before, j, after, rerr := read()
		if rerr != nil {
			return jiffyClock{}, rerr
		}
		// The jiffies clock lags CLOCK_MONOTONIC by up to a tick.
		if now := c.now(j); now+tick+window < before || now > after+window {
			err = fmt.Errorf("jiffies at CONFIG_HZ=%d stray from CLOCK_MONOTONIC: %d, want %d..%d", hz, now, before-tick, after)
			continue
		}
		return c, nil
	}
	return jiffyClock{}, err
}

func (c jiffyClock) now(jiffies uint64) uint64 { return jiffies*c.tickNS - c.base }
