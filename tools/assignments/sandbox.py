"""The sandbox that runs a submission's kernel: bubblewrap (Debian package ``bubblewrap``).

The kernel that executes a student's notebook sees:

- its own folder, ``/home/student/work`` (its working directory): a copy of the submitted
  notebook, writable, thrown away after grading;
- the Python environment, read-only: the virtual environment, the Python installation it was
  made from, ``/usr`` and the few files of ``/etc`` that programs need; the data mirror named by
  ``BOOK_DATA_MIRROR``, read-only, when it is set;
- a private, empty ``/tmp`` (also its home directory), its own ``/proc`` and a minimal ``/dev``;
- the folder of the ZeroMQ sockets through which the grader talks to it (``ipc`` transport: the
  sandbox has no network at all, not even the host's loopback).

Nothing else: no source notebook, no gradebook, no other submission, no grade output, no home
directory. It runs in its own PID namespace (it can signal nothing outside, and every process it
starts dies with it), as an unprivileged user, with limits on its address space (memory), its
number of processes and threads, and the size of a file it writes. The grader's time limits
(per cell, per submission) stop it from the outside.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, Dict, Unicode

LAUNCHER = Path(__file__).with_name("launcher.py")
INSIDE_LAUNCHER = "/opt/grader/launcher.py"
INSIDE_WORK = "/home/student/work"
INSTALL_HINT = ("bubblewrap (the `bwrap` command) is needed to grade safely: install the Debian "
                "package with `apt-get install bubblewrap`, or grade with --unsafe-no-sandbox on a "
                "machine you can afford to lose")
# What programs inside need from /etc (dynamic linker, users, time zone, fonts).
ETC = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf",
       "passwd", "group", "fonts", "mime.types"]
# A uid of its own for every sandbox when the grader runs as root (process limits are per user).
UID_BASE = 1_800_000_000


@dataclass
class Limits:
    memory_gib: float = 8.0   # address space of each process (RLIMIT_AS)
    processes: int = 256      # processes and threads of the sandbox's user (RLIMIT_NPROC)
    file_mib: int = 1024      # largest file it can write (RLIMIT_FSIZE), and /tmp's size

    def describe(self) -> str:
        return (f"memory {self.memory_gib:g} GiB per process, at most {self.processes} processes "
                f"and threads, files up to {self.file_mib} MiB, no network")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def check() -> str | None:
    """None if bubblewrap works here, else why not (naming the package)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return "bwrap not found: " + INSTALL_HINT
    args = [bwrap, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    proc = subprocess.run(args + ["true"], capture_output=True, text=True)
    if proc.returncode != 0:
        return (f"bwrap cannot create a sandbox here ({proc.stderr.strip()[:200]}); "
                "unprivileged user namespaces may be disabled (sysctl "
                "kernel.unprivileged_userns_clone=1), or run the grader as root")
    return None


@functools.lru_cache(maxsize=None)
def _tmpfs_size_supported(bwrap: str) -> bool:
    """bwrap >= 0.7 can bound the size of a tmpfs (the private /tmp lives in memory)."""
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True)
    return "--size" in help_text.stdout + help_text.stderr


def _ro_binds() -> list[Path]:
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(os.path.realpath(sys.executable)).parent.parent]
    mirror = os.environ.get("BOOK_DATA_MIRROR")
    if mirror and Path(mirror).is_dir():
        paths.append(Path(mirror).resolve())
    out = []
    for p in paths:
        p = Path(os.path.realpath(p))
        if str(p).startswith("/usr/") or p == Path("/usr") or p in out:
            continue
        out.append(p)
    return out


def command(kernel_cmd: list[str], work: Path, sockets: Path, limits: Limits,
            env: dict[str, str], uid: int | None) -> list[str]:
    """The bwrap command line that runs ``kernel_cmd`` in the sandbox."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise RuntimeError(INSTALL_HINT)
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
            "--clearenv"]
    if uid is None:  # not root: a user namespace of its own, same user id as the grader
        args.append("--unshare-user")
    else:  # root: keep only what the launcher needs to become `uid`; the rest is dropped
        args += ["--cap-add", "CAP_SETUID,CAP_SETGID"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ["bin", "lib", "lib32", "lib64", "libx32", "sbin"]:
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    made = set()

    def parents(path: Path):  # created world-readable (bwrap would make them 0700)
        out = []
        for parent in reversed(path.parents):
            if str(parent) != "/" and parent not in made:
                made.add(parent)
                out += ["--perms", "0755", "--dir", str(parent)]
        return out

    size = ["--size", str(limits.file_mib * 2**20)] if _tmpfs_size_supported(bwrap) else []
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/dev/shm",
             "--perms", "1777", *size, "--tmpfs", "/tmp"]
    for name in ETC:
        if (Path("/etc") / name).exists():
            args += parents(Path("/etc") / name) + ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for path in _ro_binds():
        args += parents(path) + ["--ro-bind", str(path), str(path)]
    args += parents(Path(INSIDE_LAUNCHER)) + ["--ro-bind", str(LAUNCHER), INSIDE_LAUNCHER]
    args += parents(sockets) + ["--bind", str(sockets), str(sockets)]
    args += parents(Path(INSIDE_WORK)) + ["--bind", str(work), INSIDE_WORK, "--chdir", INSIDE_WORK]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args + ["--", sys.executable, "-I", INSIDE_LAUNCHER, _settings(limits, uid), "--",
                   *kernel_cmd]


def _settings(limits: Limits, uid: int | None) -> str:
    s = {"memory": int(limits.memory_gib * 2**30), "processes": limits.processes,
         "file_size": limits.file_mib * 2**20}
    if uid is not None:
        s.update(uid=uid, gid=uid)
    return json.dumps(s)


def unsandboxed_command(kernel_cmd: list[str], limits: Limits) -> list[str]:
    """--unsafe-no-sandbox: the same limits (no user switch), no isolation."""
    return [sys.executable, "-I", str(LAUNCHER), _settings(limits, None), "--", *kernel_cmd]


def kernel_env(home: str = "/tmp") -> dict[str, str]:
    """The kernel's whole environment (the grader's own is not passed in: it may hold secrets)."""
    env = {"HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "JPY_PARENT_PID": "1"}  # no parent poller: the parent is the sandbox's init
    for key in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "BOOK_DATA_MIRROR", "PYTHONHASHSEED"]:
        if os.environ.get(key):
            env[key] = os.environ[key]
    if env.get("BOOK_DATA_MIRROR"):
        env["BOOK_DATA_MIRROR"] = str(Path(env["BOOK_DATA_MIRROR"]).resolve())
    return env


def sandbox_uid() -> int | None:
    return UID_BASE + os.getpid() if os.geteuid() == 0 else None


def prepare_dirs(work: Path, sockets: Path, uid: int | None) -> None:
    """The submission's folder and the socket folder, writable by the sandbox's user only."""
    for d in (work, sockets):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        if uid is not None:
            for p in [d, *d.rglob("*")]:
                os.chown(p, uid, uid, follow_symlinks=False)


class SandboxKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel runs in the sandbox (or, unsafe, only under the limits).

    The grader connects over ZeroMQ ``ipc`` sockets in ``sockets``; interrupts are sent as
    messages (a signal to bwrap would not reach the kernel)."""

    sandbox_work = Unicode("", config=True, help="the submission's copy, the kernel's cwd")
    sandbox_sockets = Unicode("", config=True, help="folder for the connection file and sockets")
    sandbox_limits = Dict({}, config=True, help="Limits fields")
    sandbox_uid = Unicode("", config=True, help="user id inside (root only), or empty")
    sandbox_disabled = Bool(False, config=True, help="--unsafe-no-sandbox")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.transport = "ipc"
        self.connection_file = str(Path(self.sandbox_sockets) / "kernel.json")
        self.ip = str(Path(self.sandbox_sockets) / "k")

    @property
    def kernel_spec(self):
        spec = super().kernel_spec
        if spec is not None:
            spec.interrupt_mode = "message"
        return spec

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        limits = Limits(**self.sandbox_limits)
        if self.sandbox_disabled:
            return unsandboxed_command(cmd, limits)
        uid = int(self.sandbox_uid) if self.sandbox_uid else None
        if uid is not None:  # written by the grader (root) just before: the kernel must read it
            os.chown(self.connection_file, uid, uid)
        return command(cmd, Path(self.sandbox_work), Path(self.sandbox_sockets), limits,
                       kernel_env(), uid)


# ----------------------------------------------------------------------------------------------
# What the sandbox stopped, in the words of the error a cell raised
# ----------------------------------------------------------------------------------------------

def explain(text: str, limits: Limits | None) -> str:
    """A note for the score table when an error is the sandbox at work ('' if not)."""
    if limits is None:
        return ""
    checks = [
        (r"^MemoryError|Cannot allocate memory|std::bad_alloc|\[Errno 12\]",
         f"stopped by the grader's memory limit ({limits.memory_gib:g} GiB)"),
        (r"\[Errno 11\] Resource temporarily unavailable|can't start new thread",
         f"stopped by the grader's process limit ({limits.processes} processes and threads)"),
        (r"\[Errno 101\]|\[Errno 111\]|Network is unreachable|Connection refused|"
         r"Name or service not known|Temporary failure in name resolution|\[Errno -[23]\]",
         "blocked: graded without network access"),
        (r"\[Errno 30\]|Read-only file system",
         "blocked: outside its own folder the notebook may not write"),
        (r"\[Errno 27\]|File too large", f"stopped: files are limited to {limits.file_mib} MiB"),
        (r"^ProcessLookupError|\[Errno 1\] Operation not permitted",
         "blocked: the notebook can signal only its own processes"),
        (r"^FileNotFoundError|^PermissionError: \[Errno 13\]",
         "the grader's sandbox holds only the notebook's own folder"),
    ]
    for pattern, note in checks:
        if re.search(pattern, text):
            return note
    return ""

