package agent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfoPid reads si_pid of a SIGCHLD siginfo: on Linux it follows
// si_signo, si_errno and si_code (three int32s) and, on 64-bit, 4 bytes of
// padding.
func siginfoPid(info *unix.Siginfo) int {
	b := (*[unsafe.Sizeof(*info)]byte)(unsafe.Pointer(info))
	off := 12
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16
	}
	return int(*(*int32)(unsafe.Pointer(&b[off])))
}
