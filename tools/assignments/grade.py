"""``grade``: autograde a folder of submitted notebooks, each in a sandbox (see sandbox.py)."""
from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from tools.build import threads_per_notebook

from . import sandbox
from .common import (CHAPTERS, REPO, STUDENT_ID, apply_mocks, build_course, chapter_notebooks,
                     exercise_name, exercises, fmt, grade_ids, mocks, nbgrader_meta)

CSV_FIELDS = ["student", "chapter", "exercise", "points", "max_points", "message", "file", "seconds"]
UNSAFE_WARNING = ("WARNING: graded WITHOUT a sandbox (--unsafe-no-sandbox): the submissions' code "
                  "ran with the grader's rights and could read the hidden tests and change any "
                  "file, these grades included")
# Code in a solution cell that changes how the kernel judges or reports: a sandbox cannot stop
# it (it runs in the same kernel as the tests), so the score table flags it for a human to read.
SUSPECT = [
    (r"^\s*(torch|np|numpy|math|statistics|builtins|pytest|unittest)(\.\w+)+\s*=(?!=)",
     "reassigns a library function"),
    (r"\bsetattr\(\s*(torch|np|numpy|math|statistics|builtins)\b|\bmock\.patch|\bpatch\.object|"
     r"\bsys\.modules\[", "reassigns a library function"),
    (r"\b(get_ipython|showtraceback|excepthook|__builtins__|import builtins|sys\._getframe|"
     r"gc\.get_referrers|ctypes)\b", "reaches into the kernel or the interpreter"),
]


@dataclass
class Submission:
    file: Path
    rel: str
    student: str
    chapter: str | None = None
    nb: object = None
    messages: list[str] = field(default_factory=list)
    error: str | None = None  # set when the file cannot be graded at all


def _student_name(path: Path, root: Path, chapters) -> str:
    rel = path.relative_to(root)
    if len(rel.parts) > 1:
        return rel.parts[0]
    name = path.stem
    for stem in sorted(chapters, key=len, reverse=True):  # alice_01_tensors -> alice
        if stem in name and name.replace(stem, "").strip(" _-.()0123456789"):
            name = name.replace(stem, "")
            break
    name = re.sub(r"\s*\(\d+\)$", "", name).strip(" _-.")  # Colab/Drive copies: "x (1)"
    return name or path.stem


def _read_submission(path: Path, root: Path, sources: dict, assigned: set[str]) -> Submission:
    s = Submission(file=path, rel=str(path.relative_to(root)),
                   student=_student_name(path, root, sources))
    try:
        nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list):
            raise ValueError("no list of cells")
    except Exception as e:  # not JSON, not a notebook, unreadable
        kind = ("not valid JSON" if isinstance(e, (json.JSONDecodeError, nbformat.reader.NotJSONError))
                else "not a Jupyter notebook")
        s.error = f"not graded: the file is {kind} ({type(e).__name__}: {str(e)[:120]})"
        return s
    s.nb = nb
    ids = set(grade_ids(nb))
    overlap = {stem: len(ids & set(src["ids"])) for stem, src in sources.items()}
    best = max(overlap.values(), default=0)
    candidates = [stem for stem, n in overlap.items() if n == best and n > 0]
    named = [stem for stem in sources if stem in path.name]
    if len(candidates) > 1 and named and named[0] in candidates:
        candidates = [named[0]]
    if candidates:
        s.chapter = candidates[0]
    elif named:
        s.chapter = named[0]
        s.messages.append("no exercise cells found")
    else:
        s.error = ("not graded: no exercise of any chapter found in this notebook "
                   "(not a book chapter, or its exercise cells were deleted)")
        return s
    if s.chapter not in assigned:
        s.error = (f"not graded: wrong chapter: this is {s.chapter}, the assignment is "
                   f"{', '.join(sorted(assigned))}")
    return s


def _drop_duplicate_ids(nb) -> list[str]:
    """Copy-pasted exercise cells repeat their grade id: keep the last copy, as nbgrader's
    DeduplicateIds does, but remove the others' nbgrader metadata entirely (nbgrader 0.9 leaves
    an empty dict, which its OverwriteCells.add_missing_cells then trips over)."""
    seen, dropped = set(), []
    for cell in reversed(nb.cells):
        meta = cell.get("metadata", {})
        if "nbgrader" not in meta:
            continue
        gid = (meta["nbgrader"] or {}).get("grade_id")
        if gid is None or gid in seen:
            del meta["nbgrader"]
            if gid is not None:
                dropped.append(gid)
        else:
            seen.add(gid)
    return sorted(set(dropped))


def _restore_solution_cells(nb, release_nb) -> list[str]:
    """Put back deleted exercise cells (as released) so nbgrader can grade what remains.

    Deleted test cells are re-added by nbgrader itself (OverwriteCells.add_missing_cells); a
    deleted solution cell comes back as the release's stub, so that exercise scores 0.
    Returns the grade ids of the cells that were missing.
    """
    present = set(grade_ids(nb))
    missing = [gid for gid in grade_ids(release_nb) if gid not in present]
    ref = {nbgrader_meta(c)["grade_id"]: c for c in release_nb.cells if nbgrader_meta(c).get("grade_id")}
    order = grade_ids(release_nb)
    for gid in missing:
        if not nbgrader_meta(ref[gid]).get("solution"):
            continue  # nbgrader re-adds test cells itself, with their hidden tests
        cell = copy.deepcopy(ref[gid])
        later = order[order.index(gid) + 1:]
        position = len(nb.cells)
        for i, c in enumerate(nb.cells):
            if nbgrader_meta(c).get("grade_id") in later:
                position = i
                break
        nb.cells.insert(position, nbformat.from_dict(cell))
    return missing


def suspect_code(nb) -> dict[str, str]:
    """Solution cells whose code changes how the kernel judges or reports, by exercise."""
    found = {}
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if cell.get("cell_type") != "code" or not meta.get("solution"):
            continue
        for pattern, what in SUSPECT:
            if re.search(pattern, cell.source, re.MULTILINE):
                found[exercise_name(meta.get("grade_id", ""))] = f"for review: the code {what}"
                break
    return found


def _prepare(s: Submission, template: Path, source_nb, schedule: str, task: dict) -> Path:
    """A work directory: a copy of the chapter's course, and the working copy of the submission."""
    work = Path(tempfile.mkdtemp(prefix=f"grade-{s.chapter}-"))
    shutil.copytree(template, work, dirs_exist_ok=True)
    nb = copy.deepcopy(s.nb)  # the working copy; the submitted file is never written
    release_nb = nbformat.read(template / "release" / s.chapter / f"{s.chapter}.ipynb", as_version=4)
    duplicated = _drop_duplicate_ids(nb)
    if duplicated:
        s.messages.append("duplicated exercise cells: " + ", ".join(duplicated)
                          + " (the last copy is graded)")
    missing = _restore_solution_cells(nb, release_nb)
    if missing:
        s.messages.append("cells deleted: " + ", ".join(missing) + " (restored from the release)")
    if schedule == "ci" and not apply_mocks(nb, mocks(source_nb)):
        s.messages.append("no parameters cell: graded on the schedule in the notebook")
    dest = work / "submitted" / STUDENT_ID / s.chapter
    dest.mkdir(parents=True)
    nbformat.write(nb, dest / f"{s.chapter}.ipynb")
    (work / "task.json").write_text(json.dumps(dict(task, chapter=s.chapter)))
    return work


def _stop(proc: subprocess.Popen) -> None:
    """Kill a worker (its own session); its kernel dies with it (bwrap --die-with-parent, or
    the launcher's parent-death signal without a sandbox)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_workers(tasks: list, jobs: int, time_limit: float, env: dict) -> dict:
    """Run each task (key, work dir) in its own process, ``jobs`` at a time.

    A process that runs longer than ``time_limit`` is killed with its kernel. Returns
    {key: (exit code or None if killed, seconds)}.
    """
    pending, running, done = list(tasks), {}, {}
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                key, work = pending.pop(0)
                with open(work / "log.txt", "wb") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", f"{__package__}.autograde", str(work)], cwd=work,
                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
                running[key] = (proc, time.monotonic())
            time.sleep(0.1)
            for key, (proc, started) in list(running.items()):
                elapsed = time.monotonic() - started
                if proc.poll() is not None:
                    done[key] = (proc.returncode, elapsed)
                    del running[key]
                elif elapsed > time_limit:
                    _stop(proc)
                    done[key] = (None, elapsed)
                    del running[key]
    finally:  # interrupted (Ctrl-C): leave no worker or kernel behind
        for proc, _ in running.values():
            _stop(proc)
    return done


def _result(work: Path, exitcode, seconds: float, time_limit: float) -> dict:
    result = {"ok": False}
    if exitcode is None:
        result["error"] = f"stopped: the notebook exceeded the time limit of {time_limit:g} s"
    elif (work / "result.json").exists():
        result = json.loads((work / "result.json").read_text())
    if not result.get("ok") and "error" not in result:
        tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-1:]
        result["error"] = f"grading failed (exit code {exitcode}): {' '.join(tail)[:200]}"
    result["seconds"] = round(seconds, 1)
    result["work"] = str(work)
    return result


def _rmtree(path: Path) -> None:
    """Remove a work folder, even what a submission left unreadable in its copy."""
    def retry(func, p, _):
        try:
            parent = os.path.dirname(p)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=retry)


def grade(submissions: Path, out: Path, source: Path = CHAPTERS, only: list[str] | None = None,
          cell_timeout: int = 300, time_limit: float = 1800, jobs: int = 1,
          schedule: str = "ci", limits: sandbox.Limits | None = None,
          unsafe_no_sandbox: bool = False) -> list[dict]:
    """Grade every notebook under ``submissions``; write ``out/grades.csv`` and feedback."""
    submissions, out = Path(submissions).resolve(), Path(out).resolve()
    limits = limits or sandbox.Limits()
    if not unsafe_no_sandbox:
        problem = sandbox.check()
        if problem:
            raise SystemExit(f"error: {problem}")
    chapters = chapter_notebooks(source, only)
    if not chapters:
        raise SystemExit(f"no chapter notebooks in {source}")
    sources = {}
    for stem, path in chapter_notebooks(source).items():  # all chapters, to recognise any of them
        nb = nbformat.read(path, as_version=4)
        sources[stem] = {"nb": nb, "ids": grade_ids(nb), "exercises": exercises(nb)}
    files = sorted(p for p in submissions.rglob("*") if p.is_file()
                   and ".ipynb_checkpoints" not in p.parts and not p.name.startswith(".")
                   and out not in p.parents)
    subs = [_read_submission(p, submissions, sources, set(chapters)) for p in files]
    seen = {}
    for s in subs:
        if s.error is None:
            key = (s.student, s.chapter)
            if key in seen:
                s.messages.append(f"duplicate submission (also {seen[key]})")
            seen.setdefault(key, s.rel)

    env = dict(os.environ)
    if env.get("BOOK_DATA_MIRROR"):  # kernels run elsewhere: a relative mirror path must not break
        env["BOOK_DATA_MIRROR"] = str(Path(env["BOOK_DATA_MIRROR"]).resolve())
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads_per_notebook(jobs))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    task = {"cell_timeout": cell_timeout, "limits": asdict(limits), "sandbox": not unsafe_no_sandbox}

    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="course-") as tmp:
        needed = {s.chapter: chapters[s.chapter] for s in subs if s.error is None}
        _, failed = build_course(Path(tmp), needed)
        for s in subs:
            if s.error is None and s.chapter in failed:
                s.error = f"not graded: the chapter cannot be released: {failed[s.chapter]}"
        tasks, results = [], {}
        for s in subs:
            if s.error is None:
                try:
                    tasks.append((id(s), _prepare(s, Path(tmp), sources[s.chapter]["nb"],
                                                  schedule, task)))
                except Exception as e:
                    s.error = f"not graded: {type(e).__name__}: {e}"
        works = dict(tasks)
        for key, (exitcode, seconds) in _run_workers(tasks, jobs, time_limit, env).items():
            results[key] = _result(works[key], exitcode, seconds, time_limit)
        for s in subs:
            rows.extend(_report(s, results.get(id(s)), sources, out,
                                None if unsafe_no_sandbox else limits))
    _write_csv(rows, out / "grades.csv")
    header = UNSAFE_WARNING if unsafe_no_sandbox else (
        f"Graded in a sandbox (bubblewrap): the notebook saw only a copy of itself and the "
        f"Python environment; {limits.describe()}; at most {fmt(cell_timeout)} s per cell and "
        f"{fmt(time_limit)} s per notebook.")
    _write_summaries(rows, out, header)
    return rows


def _message(g: dict, note: str, limits) -> str:
    """The score table's message for one exercise: the student's own cell's error first."""
    parts = []
    solution = g.get("solution_error", "")
    test = "needs manual grading" if g["points"] is None else g["message"]
    if solution:
        why = sandbox.explain(solution, limits)
        parts.append(f"your solution cell failed: {solution}" + (f" ({why})" if why else ""))
        if test:
            parts.append(f"then the test cell: {test}")
    elif test:
        why = sandbox.explain(test, limits)
        parts.append(test + (f" ({why})" if why else ""))
    return "; ".join(p for p in parts + [note] if p)


def _report(s: Submission, result: dict | None, sources: dict, out: Path, limits) -> list[dict]:
    """Rows for one submission; copies its feedback and autograded notebook into ``out``."""
    base = {"student": s.student, "file": s.rel, "seconds": (result or {}).get("seconds", "")}
    if s.error is not None:
        return [dict(base, chapter=s.chapter or "", exercise="", points=0, max_points="",
                     message=s.error)]
    note = "; ".join(s.messages)
    work = Path(result["work"]) if result and result.get("work") else None
    suspects = suspect_code(s.nb)
    try:
        if result and result.get("ok"):
            rows = []
            for g in result["grades"]:
                ex = exercise_name(g["grade_id"])
                rows.append(dict(base, chapter=s.chapter, exercise=ex,
                                 points=fmt(g["points"]), max_points=fmt(g["max_points"]),
                                 message=_message(g, "; ".join(
                                     m for m in [note, suspects.get(ex, "")] if m), limits)))
            fb = work / "feedback" / STUDENT_ID / s.chapter / f"{s.chapter}.html"
            ag = work / "autograded" / STUDENT_ID / s.chapter / f"{s.chapter}.ipynb"
            for src, dst in [(fb, out / "feedback" / s.student / f"{s.chapter}.html"),
                             (ag, out / "autograded" / s.student / f"{s.chapter}.ipynb")]:
                if src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
            return rows
        error = (result or {}).get("error", "grading failed")
        return [dict(base, chapter=s.chapter, exercise=e["id"], points=0,
                     max_points=fmt(e["points"]), message="; ".join(m for m in [error, note] if m))
                for e in sources[s.chapter]["exercises"]]
    finally:
        if work is not None and not os.environ.get("ASSIGNMENTS_KEEP_WORK"):  # set it to debug
            _rmtree(work)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def totals(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        key = (r["student"], r["chapter"], r["file"])
        t = out.setdefault(key, [0.0, 0.0])
        t[0] += float(r["points"] or 0)
        t[1] += float(r["max_points"] or 0)
    return out


def first_messages(rows: list[dict]) -> list[str]:
    """A submission's messages, errors in the student's own cells first (what to fix first)."""
    own = [f"{r['exercise']}: {r['message'].split('; then the test cell')[0]}" for r in rows
           if r["message"].startswith("your solution cell failed")]
    rest = sorted({r["message"] for r in rows if r["message"]
                   and not r["message"].startswith("your solution cell failed")})
    return own + rest


def _write_summaries(rows: list[dict], out: Path, header: str) -> None:
    by_student = {}
    for r in rows:
        by_student.setdefault(r["student"], []).append(r)
    for student, rs in by_student.items():
        lines = [f"# Feedback for {student}", "", header, ""]
        for (st, chapter, file), (pts, mx) in totals(rs).items():
            lines += [f"## {chapter or file}: {fmt(pts)} / {fmt(mx)} points", "",
                      f"Submitted file: `{file}`."]
            if chapter and (out / "feedback" / student / f"{chapter}.html").exists():
                lines.append(f"Your notebook, as graded, with the tests' output: `{chapter}.html`.")
            lines.append("")
            mine = [r for r in rs if r["file"] == file]
            broken = [r for r in mine if r["message"].startswith("your solution cell failed")]
            for r in broken:
                lines.append(f"**Fix first: exercise `{r['exercise']}`**: "
                             + r["message"].split("; then the test cell")[0] + ".")
            if broken:
                lines.append("")
            for r in mine:
                if r["exercise"]:
                    lines.append(f"- `{r['exercise']}`: {r['points']} / {r['max_points']}"
                                 + (f" ({r['message']})" if r["message"] else ""))
                else:
                    lines.append(f"- {r['message']}")
            lines.append("")
        d = out / "feedback" / student
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.md").write_text("\n".join(lines), encoding="utf-8")
