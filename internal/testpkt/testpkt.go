// Package testpkt builds the packets that anet's tests and benchmarks feed
// to the datapath: Ethernet frames with IPv4/UDP or ARP, valid unless the
// caller breaks them on purpose. Plain code, no dependencies: the frames
// are few and simple, and a test that checks rewritten bytes wants to see
// every byte it sent.
package testpkt

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// EtherType values.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// Offsets into a frame of Eth + IPv4 (no options) + UDP.
const (
	EthLen     = 14
	IPv4Len    = 20
	UDPLen     = 8
	OffIPv4    = EthLen
	OffTTL     = EthLen + 8
	OffTotLen  = EthLen + 2
	OffSrcIP   = EthLen + 12
	OffUDP     = EthLen + IPv4Len
	OffPayload = EthLen + IPv4Len + UDPLen
)

// Eth is an Ethernet header.
func Eth(dst, src net.HardwareAddr, etherType uint16) []byte {
	b := make([]byte, 0, EthLen)
	b = append(append(b, dst...), src...)
	return binary.BigEndian.AppendUint16(b, etherType)
}

// Checksum is the Internet checksum of b (RFC 1071); over a header that
// carries its checksum it is 0 when the header is valid.
func Checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// UDP describes an Ethernet/IPv4/UDP frame. A zero TTL means 64; the UDP
// checksum is left zero, which IPv4 allows.
type UDP struct {
	DstMAC, SrcMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	TTL              uint8
	Payload          []byte
}

// Frame builds the frame, with a valid IPv4 header checksum.
func (u UDP) Frame() []byte {
	ttl := u.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip := make([]byte, IPv4Len+UDPLen+len(u.Payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = ttl
	ip[9] = 17 // UDP
	s, d := u.Src.As4(), u.Dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:IPv4Len]))
	binary.BigEndian.PutUint16(ip[20:], u.SrcPort)
	binary.BigEndian.PutUint16(ip[22:], u.DstPort)
	binary.BigEndian.PutUint16(ip[24:], uint16(UDPLen+len(u.Payload)))
	copy(ip[IPv4Len+UDPLen:], u.Payload)
	return append(Eth(u.DstMAC, u.SrcMAC, EtherTypeIPv4), ip...)
}

// ARP operations.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// ARP is an Ethernet/IPv4 ARP frame.
func ARP(dst net.HardwareAddr, op uint16, senderMAC net.HardwareAddr, sender netip.Addr, targetMAC net.HardwareAddr, target netip.Addr) []byte {
	b := Eth(dst, senderMAC, EtherTypeARP)
	b = binary.BigEndian.AppendUint16(b, 1) // Ethernet
	b = binary.BigEndian.AppendUint16(b, EtherTypeIPv4)
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	s, t := sender.As4(), target.As4()
	b = append(append(b, senderMAC...), s[:]...)
	if targetMAC == nil {
		targetMAC = make(net.HardwareAddr, 6)
	}
	return append(append(b, targetMAC...), t[:]...)
}

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// WhoHas is a broadcast ARP request from senderMAC/sender for target.
func WhoHas(senderMAC net.HardwareAddr, sender, target netip.Addr) []byte {
	return ARP(Broadcast, ARPRequest, senderMAC, sender, nil, target)
}

// TCP flags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// TCP describes an Ethernet/IPv4/TCP frame (a 20-byte TCP header, no
// options) with valid IPv4 and TCP checksums.
type TCP struct {
	DstMAC, SrcMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Flags            uint8
	Seq, Ack         uint32
	TTL              uint8
	Payload          []byte
}

// Frame builds the frame.
func (c TCP) Frame() []byte {
	ttl := c.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip := make([]byte, IPv4Len+20+len(c.Payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = ttl
	ip[9] = 6 // TCP
	s, d := c.Src.As4(), c.Dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:IPv4Len]))
	t := ip[IPv4Len:]
	binary.BigEndian.PutUint16(t[0:], c.SrcPort)
	binary.BigEndian.PutUint16(t[2:], c.DstPort)
	binary.BigEndian.PutUint32(t[4:], c.Seq)
	binary.BigEndian.PutUint32(t[8:], c.Ack)
	t[12] = 5 << 4
	t[13] = c.Flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	copy(t[20:], c.Payload)
	binary.BigEndian.PutUint16(t[16:], L4Checksum(ip))
	return append(Eth(c.DstMAC, c.SrcMAC, EtherTypeIPv4), ip...)
}

// WithUDPChecksum returns a UDP frame (from UDP.Frame) with its UDP
// checksum filled in.
func WithUDPChecksum(frame []byte) []byte {
	ip := frame[EthLen:]
	binary.BigEndian.PutUint16(ip[IPv4Len+6:], 0)
	c := L4Checksum(ip)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(ip[IPv4Len+6:], c)
	return frame
}

// L4Checksum is the TCP or UDP checksum over an IPv4 packet (ip starts at
// the IPv4 header, without options) with its pseudo-header. Over a packet
// whose checksum field is filled in and right, it is 0.
func L4Checksum(ip []byte) uint16 {
	l4 := ip[IPv4Len:]
	pseudo := make([]byte, 0, 12+len(l4))
	pseudo = append(pseudo, ip[12:20]...)
	pseudo = append(pseudo, 0, ip[9])
	pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(l4)))
	pseudo = append(pseudo, l4...)
	return Checksum(pseudo)
}

// IPv4 is an Ethernet/IPv4 frame around an L4 payload that the caller
// built (an SCTP packet, an ICMP message, a later fragment), with a valid
// IPv4 header checksum. FragOff is the IPv4 flags-and-offset field (0x2000
// more fragments, the low 13 bits the offset in 8-byte units).
type IPv4 struct {
	DstMAC, SrcMAC net.HardwareAddr
	Src, Dst       netip.Addr
	Proto          uint8
	TOS            uint8
	ID             uint16
	FragOff        uint16
	TTL            uint8
	Payload        []byte
}

// Frame builds the frame.
func (p IPv4) Frame() []byte {
	ttl := p.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip := make([]byte, IPv4Len+len(p.Payload))
	ip[0] = 0x45
	ip[1] = p.TOS
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], p.ID)
	binary.BigEndian.PutUint16(ip[6:], p.FragOff)
	ip[8] = ttl
	ip[9] = p.Proto
	s, d := p.Src.As4(), p.Dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:IPv4Len]))
	copy(ip[IPv4Len:], p.Payload)
	return append(Eth(p.DstMAC, p.SrcMAC, EtherTypeIPv4), ip...)
}

// SCTPHeader is an SCTP common header (ports, verification tag, a zero
// checksum: nothing on the path checks it) followed by one chunk of
// chunkType with an empty body (1 INIT, 0 DATA...).
func SCTPHeader(srcPort, dstPort uint16, tag uint32, chunkType uint8) []byte {
	b := binary.BigEndian.AppendUint16(nil, srcPort)
	b = binary.BigEndian.AppendUint16(b, dstPort)
	b = binary.BigEndian.AppendUint32(b, tag)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = append(b, chunkType, 0)
	return binary.BigEndian.AppendUint16(b, 4)
}

// ICMPEcho is an ICMP echo request (or reply) message with a valid
// checksum.
func ICMPEcho(reply bool, id, seq uint16) []byte {
	b := []byte{8, 0, 0, 0}
	if reply {
		b[0] = 0
	}
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, seq)
	binary.BigEndian.PutUint16(b[2:], Checksum(b))
	return b
}

// GenevePort is Geneve's UDP port (RFC 8926).
const GenevePort = 6081

// Geneve is an Ethernet frame tunnelled in Geneve over IPv4/UDP, as anet's
// overlay sends it: outer IPv4 with DF, TTL 64 (unless TTL says), the
// given TOS and ID 0; UDP checksum 0; a Geneve header of version 0 with
// Options (a multiple of 4 bytes) and protocol 0x6558 unless Proto says.
// Version, Flags and OptLenWords, when set, override what is written, to
// build malformed packets.
type Geneve struct {
	DstMAC, SrcMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // DstPort 0: GenevePort
	TOS, TTL         uint8
	VNI              uint32
	Proto            uint16 // 0: 0x6558, Transparent Ethernet Bridging
	Version, Flags   uint8
	OptLenWords      uint8 // 0: len(Options)/4
	Options          []byte
	Inner            []byte // the inner Ethernet frame
}

// Frame builds the frame.
func (g Geneve) Frame() []byte {
	dport, proto, optw := g.DstPort, g.Proto, g.OptLenWords
	if dport == 0 {
		dport = GenevePort
	}
	if proto == 0 {
		proto = 0x6558
	}
	if optw == 0 {
		optw = uint8(len(g.Options) / 4)
	}
	udp := binary.BigEndian.AppendUint16(nil, g.SrcPort)
	udp = binary.BigEndian.AppendUint16(udp, dport)
	udp = binary.BigEndian.AppendUint16(udp, uint16(UDPLen+8+len(g.Options)+len(g.Inner)))
	udp = binary.BigEndian.AppendUint16(udp, 0)
	udp = append(udp, g.Version<<6|optw&0x3f, g.Flags)
	udp = binary.BigEndian.AppendUint16(udp, proto)
	udp = append(udp, byte(g.VNI>>16), byte(g.VNI>>8), byte(g.VNI), 0)
	udp = append(append(udp, g.Options...), g.Inner...)
	return IPv4{DstMAC: g.DstMAC, SrcMAC: g.SrcMAC, Src: g.Src, Dst: g.Dst, Proto: 17, TOS: g.TOS,
		FragOff: 0x4000, TTL: g.TTL, Payload: udp}.Frame()
}
