"""Chapter 13 starts processes (torchrun and its workers): none of them may outlive it.

The first test reads /proc after the build has executed the chapter; the others run the chapter's
own launch helpers (the code cell that defines `launch` and `stop`, taken from the notebook) on a
tiny torchrun job whose workers do not import torch, and check that nothing is left running, both
when the job ends by itself and when it hangs and is stopped. Linux only (they read /proc)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from notebook_checks import ROOT, read
from tools import build

STEM = "13_distributed"
CHAPTER = ROOT / "notebooks" / f"{STEM}.ipynb"
# The scripts the chapter writes with %%writefile and runs with torchrun.
SCRIPTS = ["sleeper.py", "collectives.py", "ddp_train.py", "fsdp_train.py"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

TINY_JOB = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], f"rank{os.environ['RANK']}").write_text(
    f"{os.getpid()} {os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']}")
time.sleep(float(sys.argv[2]))
"""


def running(text):
    """Live (not zombie) processes whose command line contains `text`, except this one."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found.append((int(entry.name), cmdline.strip()))
    return found


def gone(text, seconds=10):
    deadline = time.time() + seconds
    while running(text) and time.time() < deadline:
        time.sleep(0.05)
    return running(text) == []


def test_the_chapter_writes_exactly_these_scripts():
    """Keeps SCRIPTS in step with the chapter, so that the scan below looks for the right names."""
    written = [c.source.splitlines()[0].split()[1] for c in read(CHAPTER).cells
               if c.cell_type == "code" and c.source.startswith("%%writefile")]
    assert sorted(written) == sorted(SCRIPTS)


def test_no_process_of_the_chapter_outlives_the_build():
    executed = build.RUN_DIR / STEM / f"{STEM}.ipynb"
    assert executed.exists(), "run `make test` (tools/build.py --schedule ci) first"
    left = [p for script in SCRIPTS for p in running(script)]
    assert left == [], f"still running after the chapter: {left}"


@pytest.fixture(scope="module")
def chapter():
    """The chapter's cell that defines free_port, torchrun_command, stop and launch, run here."""
    cells = [c.source for c in read(CHAPTER).cells if c.cell_type == "code"]
    source = next(c for c in cells if "def launch(" in c and "def stop(" in c)
    namespace = {"os": os, "signal": signal, "socket": socket, "subprocess": subprocess,
                 "sys": sys, "time": time, "Path": Path, "LAUNCH_TIMEOUT": 120}
    exec(compile(source, f"{CHAPTER.name}: launch cell", "exec"), namespace)
    return namespace


def test_a_tiny_torchrun_job_ends_with_all_its_processes(chapter, tmp_path, capsys):
    script = tmp_path / "ch13_tiny_job.py"
    script.write_text(TINY_JOB)
    chapter["launch"](script, tmp_path, 0, nproc=2)
    ranks = sorted(p.name for p in tmp_path.glob("rank*"))
    assert ranks == ["rank0", "rank1"], "both workers ran, with torchrun's environment"
    assert all(p.read_text().split()[1] == "2" for p in tmp_path.glob("rank*"))
    assert gone(str(script)), running(str(script))


def test_a_hung_job_is_stopped_with_its_workers(chapter, tmp_path):
    script = tmp_path / "ch13_hung_job.py"
    script.write_text(TINY_JOB)
    command = chapter["torchrun_command"](script, tmp_path, 3600, nproc=2)
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("rank*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        workers = [int(p.read_text().split()[0]) for p in tmp_path.glob("rank*")]
        assert len(workers) == 2, "the workers did not start"
        assert set(workers) <= set(chapter["descendants"](job.pid))
    finally:
        chapter["stop"](job)
    assert gone(str(script)), running(str(script))
    assert job.returncode is not None
