package main

import (
	"os"
	"syscall"
)

// stopWithParent asks Linux to send this process SIGTERM when its parent
// dies, which it then handles as a normal shutdown (the caller has set up
// the signal handling). `make run` starts nomnom through `go run`; a
// SIGTERM to make (an IDE's stop button, a process manager) ends make and
// go run but would leave nomnom holding its ports and stores.
func stopWithParent() {
	ppid := os.Getppid()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); errno != 0 {
		return
	}
	if os.Getppid() != ppid { // the parent died before the request took effect
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
