package kernel

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LegacyTableInfo is what the kernel tells about a legacy iptables
// (x_tables) table without dumping its rules: how many entries it holds
// and their size in bytes. Any change to the table (a flush, a rule added
// by someone) changes it, at the cost of one getsockopt — reading the
// rules instead (iptables -S) copies the whole table, half a second for
// 10,000 services.
type LegacyTableInfo struct {
	Entries uint32
	Size    uint32
}

// ipt_getinfo's IPT_SO_GET_INFO (IPT_BASE_CTL 64): name[32], valid_hooks,
// hook_entry[5], underflow[5], num_entries, size.
const (
	iptSoGetInfo   = 64
	iptGetInfoSize = 32 + 4 + 5*4 + 5*4 + 4 + 4
)

// LegacyIPTablesInfo reads a legacy iptables table's LegacyTableInfo.
// Asking about a table makes the kernel create it in the namespace if it
// did not exist, so ask only about tables in use.
func (n *NetNS) LegacyIPTablesInfo(table string) (LegacyTableInfo, error) {
	var info LegacyTableInfo
	if len(table) >= 32 {
		return info, fmt.Errorf("iptables table name %q too long", table)
	}
	err := n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var buf [iptGetInfoSize]byte
		copy(buf[:], table)
		l := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_IP, iptSoGetInfo,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno != 0 {
			return errno
		}
		info.Entries = binary.NativeEndian.Uint32(buf[iptGetInfoSize-8:])
		info.Size = binary.NativeEndian.Uint32(buf[iptGetInfoSize-4:])
		return nil
	})
	if err != nil {
		return info, fmt.Errorf("legacy iptables table %s info in %s: %w", table, n, err)
	}
	return info, nil
}
