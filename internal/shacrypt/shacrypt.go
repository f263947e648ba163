// Package shacrypt computes SHA-512 crypt ("$6$") password hashes, the
// format of /etc/shadow on Debian and Alpine, as specified by Ulrich
// Drepper ("Unix crypt using SHA-256 and SHA-512", 2007).
package shacrypt

import (
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"strconv"
	"strings"
)

// DefaultRounds is the round count crypt(3) uses when none is given.
const DefaultRounds = 5000

const alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Hash returns a "$6$" hash of password with a fresh random salt and the
// default round count.
func Hash(password string) (string, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	salt := make([]byte, 16)
	for i, b := range raw {
		salt[i] = alphabet[b&0x3f]
	}
	return Crypt(password, "$6$"+string(salt))
}

// Crypt hashes password with the settings in setting ("$6$salt" or
// "$6$rounds=N$salt", optionally followed by "$" and an old hash), like
// crypt(3).
func Crypt(password, setting string) (string, error) {
	rest, ok := strings.CutPrefix(setting, "$6$")
	if !ok {
		return "", errors.New("shacrypt: setting must start with $6$")
	}
	rounds, custom := DefaultRounds, false
	if r, ok := strings.CutPrefix(rest, "rounds="); ok {
		n, after, found := strings.Cut(r, "$")
		v, err := strconv.Atoi(n)
		if !found || err != nil {
			return "", errors.New("shacrypt: bad rounds= field")
		}
		rounds, custom, rest = min(max(v, 1000), 999999999), true, after
	}
	salt, _, _ := strings.Cut(rest, "$")
	if len(salt) > 16 {
		salt = salt[:16]
	}
	sum := compute([]byte(password), []byte(salt), rounds)
	var b strings.Builder
	b.WriteString("$6$")
	if custom {
		b.WriteString("rounds=" + strconv.Itoa(rounds) + "$")
	}
	b.WriteString(salt + "$")
	encode(&b, sum)
	return b.String(), nil
}

func compute(p, s []byte, rounds int) []byte {
	hb := sha512.New()
	hb.Write(p)
	hb.Write(s)
	hb.Write(p)
	b := hb.Sum(nil)

	ha := sha512.New()
	ha.Write(p)
	ha.Write(s)
	n := len(p)
	for ; n > 64; n -= 64 {
		ha.Write(b)
	}
	ha.Write(b[:n])
	for n := len(p); n > 0; n >>= 1 {
		if n&1 != 0 {
			ha.Write(b)
		} else {
			ha.Write(p)
		}
	}
	a := ha.Sum(nil)

	hp := sha512.New()
	for range len(p) {
		hp.Write(p)
	}
	pSeq := repeat(hp.Sum(nil), len(p))

	hs := sha512.New()
	for range 16 + int(a[0]) {
		hs.Write(s)
	}
	sSeq := repeat(hs.Sum(nil), len(s))

	c := a
	for i := range rounds {
		h := sha512.New()
		if i&1 != 0 {
			h.Write(pSeq)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(sSeq)
		}
		if i%7 != 0 {
			h.Write(pSeq)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pSeq)
		}
		c = h.Sum(nil)
	}
	return c
}

// repeat returns n bytes of d repeated.
func repeat(d []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, d[:min(len(d), n-len(out))]...)
	}
	return out
}

// order is the byte permutation SHA-512 crypt encodes its digest in.
var order = [...][3]int{
	{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4}, {47, 5, 26}, {6, 27, 48},
	{28, 49, 7}, {50, 8, 29}, {9, 30, 51}, {31, 52, 10}, {53, 11, 32}, {12, 33, 54}, {34, 55, 13},
	{56, 14, 35}, {15, 36, 57}, {37, 58, 16}, {59, 17, 38}, {18, 39, 60}, {40, 61, 19}, {62, 20, 41},
}

func encode(b *strings.Builder, d []byte) {
	put := func(w uint32, n int) {
		for range n {
			b.WriteByte(alphabet[w&0x3f])
			w >>= 6
		}
	}
	for _, o := range order {
		put(uint32(d[o[0]])<<16|uint32(d[o[1]])<<8|uint32(d[o[2]]), 4)
	}
	put(uint32(d[63]), 2)
}
