// Command dnsflood is a hostile guest's DNS client for the egress tests:
// it floods a resolver with crafted and valid queries over UDP, and opens
// more TCP connections than it should, for a while. Not part of smolvm.
//
//	dnsflood ADDR:PORT SECONDS NAME
//	dnsflood -bench ADDR:PORT COUNT NAME   (sequential queries: median RTT)
package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

func query(id uint16, name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = append(b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD, one question
	for _, l := range strings.Split(name, ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0, 0, 1, 0, 1) // A, IN
}

// bench asks name count times, one after another, and prints the median
// round trip of those answered.
func bench(addr string, count int, name string) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, 1500)
	var rtts []time.Duration
	for i := range count {
		q := query(uint16(i), name)
		start := time.Now()
		c.Write(q)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
	}
	slices.Sort(rtts)
	if len(rtts) == 0 {
		fmt.Println("no answers")
		os.Exit(1)
	}
	fmt.Printf("answered %d of %d, median %v\n", len(rtts), count, rtts[len(rtts)/2])
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "-bench" {
		n, _ := strconv.Atoi(os.Args[3])
		bench(os.Args[2], n, os.Args[4])
		return
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: dnsflood ADDR:PORT SECONDS NAME")
		os.Exit(2)
	}
	secs, _ := strconv.Atoi(os.Args[2])
	valid := query(1, os.Args[3])
	loop := append(query(2, "x")[:12], 0xc0, 12, 0, 1, 0, 1)
	crafted := [][]byte{valid, loop, valid[:7], make([]byte, 4000), append([]byte{0, 3, 0x81, 0x80}, valid[4:]...)}
	c, err := net.Dial("udp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var conns []net.Conn
	for range 64 {
		if tc, err := net.DialTimeout("tcp", os.Args[1], time.Second); err == nil {
			conns = append(conns, tc) // held open, silent
		}
	}
	sent := 0
	junk := make([]byte, 512)
	for end := time.Now().Add(time.Duration(secs) * time.Second); time.Now().Before(end); {
		for _, p := range crafted {
			c.Write(p)
			sent++
		}
		for i := range junk {
			junk[i] = byte(rand.N(256))
		}
		c.Write(junk[:rand.N(len(junk))])
		sent++
	}
	fmt.Printf("sent %d packets, held %d tcp connections\n", sent, len(conns))
}
