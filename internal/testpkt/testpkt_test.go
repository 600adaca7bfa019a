package testpkt

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	ipA  = netip.MustParseAddr("10.244.1.5")
	ipB  = netip.MustParseAddr("10.244.1.6")
)

func TestUDPFrame(t *testing.T) {
	f := UDP{DstMAC: macB, SrcMAC: macA, Src: ipA, Dst: ipB, SrcPort: 40000, DstPort: 8081, Payload: []byte("hello")}.Frame()
	if len(f) != OffPayload+5 {
		t.Fatalf("length %d", len(f))
	}
	if !bytes.Equal(f[0:6], macB) || !bytes.Equal(f[6:12], macA) || binary.BigEndian.Uint16(f[12:]) != EtherTypeIPv4 {
		t.Errorf("ethernet header %x", f[:EthLen])
	}
	if Checksum(f[OffIPv4:OffUDP]) != 0 {
		t.Error("IPv4 header checksum invalid")
	}
	if f[OffTTL] != 64 || binary.BigEndian.Uint16(f[OffTotLen:]) != 33 || !bytes.Equal(f[OffSrcIP:OffSrcIP+4], ipA.AsSlice()) {
		t.Errorf("IPv4 header %x", f[OffIPv4:OffUDP])
	}
	if binary.BigEndian.Uint16(f[OffUDP+4:]) != 13 || string(f[OffPayload:]) != "hello" {
		t.Errorf("UDP %x", f[OffUDP:])
	}
}

func TestWhoHas(t *testing.T) {
	f := WhoHas(macA, ipA, ipB)
	want := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 244, 1, 5, 0, 0, 0, 0, 0, 0, 10, 244, 1, 6}
	if !bytes.Equal(f, want) {
		t.Errorf("ARP request\n got %x\nwant %x", f, want)
	}
}

func TestChecksumOdd(t *testing.T) {
	if Checksum([]byte{0xff}) != ^uint16(0xff00) {
		t.Error("odd-length checksum")
	}
}
