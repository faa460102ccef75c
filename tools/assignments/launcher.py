"""The first program inside a grading sandbox: set the limits, drop privileges, run the kernel.

    python launcher.py '{"memory": BYTES, "processes": N, "file_size": BYTES, "uid": U, "gid": G}' \
        -- KERNEL COMMAND...

It runs with the standard library only: inside the sandbox it is bound read-only at
/opt/grader/launcher.py (tools/assignments/sandbox.py builds the command). Without a sandbox
(``--unsafe-no-sandbox``) it still sets the limits, and asks the kernel to be killed when the
grading process that started it dies.
"""
import ctypes
import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    settings, command = json.loads(argv[1]), argv[argv.index("--") + 1:]
    # The kernel dies with whoever started it (bwrap, or the grading worker without a sandbox).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, key in [("RLIMIT_AS", "memory"), ("RLIMIT_NPROC", "processes"),
                      ("RLIMIT_FSIZE", "file_size")]:
        if settings.get(key):
            resource.setrlimit(getattr(resource, name), (settings[key], settings[key]))
    if settings.get("uid") is not None:  # started as root: become an unprivileged user, for
        os.setgroups([])                  # RLIMIT_NPROC binds only users other than root
        os.setgid(settings["gid"])
        os.setuid(settings["uid"])
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
