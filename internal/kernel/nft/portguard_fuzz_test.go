package nft

import (
	"bytes"
	"testing"
)

// FuzzPortGuardKey: any element key the kernel returns parses without a
// panic, and what parses prints back (sourceKey) into a key that parses
// the same.
func FuzzPortGuardKey(f *testing.F) {
	f.Add(append(append(ifnameKey("veth1a2b3c4d"), 2, 0, 0, 0, 0, 10, 0, 0), 10, 0, 1, 5))
	f.Add(make([]byte, 28))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, k []byte) {
		s, ok := parseSourceKey(k)
		if !ok {
			if len(k) == 28 {
				t.Fatalf("a 28-byte key was refused")
			}
			return
		}
		k2, err := sourceKey(s)
		if err != nil {
			return // an empty or unprintable port name: never one we wrote
		}
		s2, ok := parseSourceKey(k2)
		if !ok || s2.Port != s.Port || !bytes.Equal(s2.MAC, s.MAC) || s2.Addr != s.Addr {
			t.Fatalf("%v printed as %x parses as %v", s, k2, s2)
		}
	})
}
