//go:build linux

package testnode

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Listen opens a listener ("tcp" or "udp") inside the pod's netns; the
// socket stays in that netns whatever goroutine uses it later.
func (p *Pod) Listen(network, addr string) (any, error) {
	var l any
	err := p.Do(func() error {
		var err error
		switch network {
		case "tcp":
			l, err = net.Listen("tcp4", addr)
		case "udp":
			l, err = net.ListenPacket("udp4", addr)
		default:
			err = fmt.Errorf("unknown network %q", network)
		}
		return err
	})
	return l, err
}

// Dial connects from inside the pod's netns.
func (p *Pod) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Ping sends ICMP echo requests from the pod with the system ping.
func (p *Pod) Ping(dst string, count int) error {
	out, err := p.Exec("ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", dst)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", dst, p.Name, err, out)
	}
	return nil
}

// SendRaw writes Ethernet frames as they are out of the pod's interface,
// through a packet socket: what a pod with CAP_NET_RAW can send.
func (p *Pod) SendRaw(frames ...[]byte) error {
	return p.Do(func() error {
		ifi, err := net.InterfaceByName(p.IfName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("sending %d-byte frame: %w", len(f), err)
			}
		}
		return nil
	})
}
