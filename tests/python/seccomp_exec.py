"""Runs a command under a system-call allow list, as systemd's SystemCallFilter=
does: calls not in the list fail with EPERM (SystemCallErrorNumber=EPERM), and
calls of other architectures are refused (SystemCallArchitectures=native).

Usage: seccomp_exec.py SYSCALL[,SYSCALL…] -- COMMAND [ARG…]
Names this kernel/architecture does not know are skipped, as systemd skips them.
"""
import errno
import os
import sys

import seccomp


def main() -> None:
    allowed = sys.argv[1].split(",")
    if sys.argv[2] != "--":
        sys.exit("usage: seccomp_exec.py SYSCALLS -- COMMAND [ARG...]")
    command = sys.argv[3:]
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in allowed:
        try:
            syscall_filter.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            pass
    syscall_filter.load()
    os.execv(command[0], command)


main()
