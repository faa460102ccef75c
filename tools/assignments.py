"""Classroom assignments from the book's chapters, built on nbgrader.

Every chapter notebook (``notebooks/NN_topic.ipynb``) is an nbgrader *source* notebook: its
exercises carry nbgrader cell metadata (see CONTRIBUTING.md). This module drives nbgrader's own
converters through a throw-away course directory and gradebook; it adds no grading logic of its own.

    python -m tools.assignments release            # student/NN_topic.ipynb for every chapter
    python -m tools.assignments release --check    # exit 1 if student/ is not up to date
    python -m tools.assignments grade SUBMISSIONS --out DIR [--chapters 01_tensors,02_autograd]
    python -m tools.assignments list               # chapters, exercise ids and points

``release`` runs ``nbgrader generate_assignment`` (solutions replaced by a
``raise NotImplementedError()`` stub, hidden tests removed, outputs cleared, cells locked and
checksummed) and rewrites the Colab badge to point at the student copy, which is committed under
``student/`` so that its Colab link is stable. Generation is deterministic: the tests regenerate
the files and compare bytes.

``grade`` takes a folder of submitted notebooks, ``SUBMISSIONS/<student>.ipynb`` or
``SUBMISSIONS/<student>/<any name>.ipynb`` (any chapter; the chapter is recognised from the
exercise ids inside the notebook), and writes ``DIR/grades.csv`` (student, chapter, exercise,
points, max_points, message, file, seconds), ``DIR/feedback/<student>/`` (nbgrader's HTML
feedback per chapter and a ``summary.md``) and ``DIR/autograded/<student>/<chapter>.ipynb``.
Each submission is graded by ``nbgrader autograde`` (which re-inserts the hidden tests from the
gradebook, restores locked cells and re-adds deleted test cells) on a copy, in its own forked
process and session (``--jobs`` at a time): submitted files are only read. The chapter runs on its
CI schedule (its nbmake mocks) unless ``--schedule full``. A cell that runs longer than
``--cell-timeout`` is interrupted and scores 0; a kernel that dies or ignores the interrupt fails
the remaining cells (earlier exercises keep their points); a submission that exceeds
``--time-limit`` as a whole is killed with its kernel and scores 0; the others are graded
regardless. Files that cannot be graded (not JSON, not a notebook of the book, not one of the
assigned chapters) get a row with a message instead of a crash. Set ASSIGNMENTS_KEEP_WORK=1 to
keep the work folders (nbgrader's log of each submission is their log.txt).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / "notebooks"
STUDENT = REPO / "student"
CHAPTER_RE = re.compile(r"^\d\d_\w+$")
COURSE_ID = "interactive-pytorch"
STUDENT_ID = "student"  # nbgrader's id for the one student of each throw-away course
CSV_FIELDS = ["student", "chapter", "exercise", "points", "max_points", "message", "file", "seconds"]
STUDENT_NOTE = (
    "\n\n> **Student version.** The exercises at the end of this notebook are yours to solve: "
    "replace each `raise NotImplementedError()` with your code, then run the test cell below it. "
    "When grading, your instructor runs further (hidden) tests. Do not delete, split or reorder "
    "the exercise cells."
)


# ----------------------------------------------------------------------------------------------
# Chapters and their exercises
# ----------------------------------------------------------------------------------------------

def chapter_notebooks(source: Path = CHAPTERS, only: list[str] | None = None) -> dict[str, Path]:
    """The chapter notebooks ``NN_topic.ipynb`` in ``source``, by stem, in reading order."""
    found = {p.stem: p for p in sorted(Path(source).glob("*.ipynb")) if CHAPTER_RE.match(p.stem)}
    if only:
        missing = [c for c in only if c not in found]
        if missing:
            raise SystemExit(f"unknown chapter(s) {', '.join(missing)}; "
                             f"chapters in {source}: {', '.join(found) or 'none'}")
        found = {c: found[c] for c in only}
    return found


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_graded(cell) -> bool:
    """An autograded test cell: a code cell with ``grade: true`` (and not itself a solution)."""
    m = nbgrader_meta(cell)
    return cell.get("cell_type") == "code" and bool(m.get("grade")) and not m.get("solution")


def exercise_name(grade_id: str) -> str:
    """``softmax_tests`` -> ``softmax`` (CONTRIBUTING.md: ``<id>_solution`` / ``<id>_tests``)."""
    return grade_id[: -len("_tests")] if grade_id.endswith("_tests") else grade_id


def exercises(nb) -> list[dict]:
    """The autograded exercises of a notebook, in order: id, grade_id, points, cell index."""
    out = []
    for i, cell in enumerate(nb.cells):
        if is_graded(cell):
            m = nbgrader_meta(cell)
            out.append({"id": exercise_name(m["grade_id"]), "grade_id": m["grade_id"],
                        "points": m.get("points", 0), "index": i})
    return out


def grade_ids(nb) -> list[str]:
    return [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c).get("grade_id")]


def parameters_cell(nb):
    for cell in nb.cells:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def mocks(nb) -> dict:
    """The CI schedule of a chapter: the ``nbmake.mock`` metadata of its ``parameters`` cell."""
    cell = parameters_cell(nb)
    return dict(cell.metadata.get("nbmake", {}).get("mock", {})) if cell is not None else {}


def apply_mocks(nb, values: dict) -> bool:
    """Append ``NAME = value`` lines to the parameters cell, as nbmake's mock does at run time.

    Works on the caller's (working) copy. Returns False if the notebook has no parameters cell.
    """
    cell = parameters_cell(nb)
    if cell is None:
        return False
    if values:
        lines = "\n".join(f"{k} = {v!r}" for k, v in values.items())
        cell.source = cell.source.rstrip("\n") + "\n# CI schedule (the parameters cell's nbmake mock)\n" + lines
    return True


# ----------------------------------------------------------------------------------------------
# nbgrader course directories
# ----------------------------------------------------------------------------------------------

def _nbgrader_environment() -> None:
    # nbgrader calls the `alembic` script when it creates a gradebook: make the venv's scripts
    # reachable even when the venv is not activated (python -m ... from .venv/bin/python).
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    logging.getLogger("traitlets").setLevel(logging.WARNING)


def _config(root: Path, assignment: str, student: str | None = None, cell_timeout: int = 300):
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    c.CourseDirectory.assignment_id = assignment
    if student is not None:
        c.CourseDirectory.student_id = student
    # Autograde: re-add deleted test cells (with their hidden tests) from the gradebook.
    c.OverwriteCells.add_missing_cells = True
    c.Execute.timeout = cell_timeout
    c.Execute.interrupt_on_timeout = True
    c.Autograde.autograde_preprocessors = [  # nbgrader's list, with Execute surviving kernel death
        "tools.assignments.RobustExecute",
        "nbgrader.preprocessors.IgnorePattern",
        "nbconvert.preprocessors.ClearMetadataPreprocessor",
        "nbgrader.preprocessors.LimitOutput",
        "nbgrader.preprocessors.SaveAutoGrades",
        "nbgrader.preprocessors.AssignLatePenalties",
        "nbgrader.preprocessors.CheckCellMetadata",
    ]
    return c


class _ErrorLog(logging.Handler):
    """Keeps the errors nbgrader logs: the reason a submission could not be autograded."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())

    def reason(self) -> str:
        for text in self.records:  # the last line of the first traceback logged
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            if lines and lines[0].startswith("Traceback"):
                return lines[-1][:300]
        return self.records[0].splitlines()[0][:300] if self.records else ""


class NbgraderFailed(Exception):
    pass


def _run_converter(cls, root: Path, assignment: str, student: str | None = None, **kw) -> None:
    """Run one nbgrader converter; on failure raise NbgraderFailed with nbgrader's own reason."""
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    c = _config(root, assignment, student, **kw)
    app = cls(coursedir=CourseDirectory(config=c), config=c)
    app.force = True
    errors = _ErrorLog()
    app.log.addHandler(errors)
    try:
        app.start()
    except NbGraderException as e:
        raise NbgraderFailed(f"nbgrader {cls.__name__} failed on {assignment}: "
                             f"{errors.reason() or e}") from None
    finally:
        app.log.removeHandler(errors)


def build_course(root: Path, chapters: dict[str, Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """A course directory with one assignment per chapter (nbgrader generate_assignment).

    Returns the released notebooks by chapter, and the chapters nbgrader refused, with its reason.
    """
    from nbgrader.converters import GenerateAssignment

    _nbgrader_environment()
    released, errors = {}, {}
    for stem, path in chapters.items():
        (root / "source" / stem).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / "source" / stem / f"{stem}.ipynb")
        try:
            _run_converter(GenerateAssignment, root, stem)
            released[stem] = root / "release" / stem / f"{stem}.ipynb"
        except NbgraderFailed as e:
            hints = marker_problems(nbformat.read(path, as_version=4))
            errors[stem] = str(e) + (f" ({'; '.join(hints)})" if hints else "")
    return released, errors


MARKERS = {"BEGIN SOLUTION": "solution", "END SOLUTION": "solution",
           "BEGIN HIDDEN TESTS": "grade", "END HIDDEN TESTS": "grade"}


def marker_problems(nb) -> list[str]:
    """nbgrader takes any line containing a marker for a marker, even in prose: list the cells
    where a marker appears outside the kind of exercise cell it belongs in."""
    problems = []
    for i, cell in enumerate(nb.cells):
        meta = nbgrader_meta(cell)
        for marker, flag in MARKERS.items():
            if marker in cell.source and not meta.get(flag):
                kind = "solution" if flag == "solution" else "test"
                problems.append(f"cell {i} ({cell.cell_type}) contains {marker!r} but is not an "
                                f"exercise {kind} cell: rephrase it")
    return problems


# ----------------------------------------------------------------------------------------------
# release: student notebooks
# ----------------------------------------------------------------------------------------------

def student_version(released: Path, stem: str, dest_dir: str = "student") -> str:
    """nbgrader's release notebook, with the Colab badge pointing at the student copy."""
    nb = nbformat.read(released, as_version=4)
    title = nb.cells[0]
    pattern = re.compile(r"(colab\.research\.google\.com/github/[^)\s]*?/blob/[^/)\s]+/)notebooks/"
                         + re.escape(stem) + r"\.ipynb")
    if title.cell_type == "markdown" and pattern.search(title.source):
        title.source = pattern.sub(rf"\g<1>{dest_dir}/{stem}.ipynb", title.source) + STUDENT_NOTE
    return nbformat.writes(nb) + "\n"


def release(source: Path = CHAPTERS, out: Path = STUDENT, only: list[str] | None = None,
            check: bool = False) -> tuple[list[str], dict[str, str]]:
    """Write (or with ``check``, compare) the student notebooks.

    Returns the files that differ (written, unless ``check``) and the chapters that failed.
    """
    chapters = chapter_notebooks(source, only)
    out = Path(out)
    differ = []
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        released, errors = build_course(Path(tmp), chapters)
        for stem, path in released.items():
            text = student_version(path, stem, out.name)
            target = out / f"{stem}.ipynb"
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                differ.append(str(target))
                if not check:
                    out.mkdir(parents=True, exist_ok=True)
                    target.write_text(text, encoding="utf-8")
    if only is None and out.exists():  # student copies of chapters that no longer exist
        for stale in sorted(out.glob("*.ipynb")):
            if CHAPTER_RE.match(stale.stem) and stale.stem not in chapters:
                differ.append(str(stale))
                if not check:
                    stale.unlink()
    return differ, errors


# ----------------------------------------------------------------------------------------------
# grade: autograding submissions
# ----------------------------------------------------------------------------------------------

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


def _error_text(cell, cell_timeout: int) -> str:
    enames = [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if "CellTimeoutError" in enames:
        return f"timed out: the cell ran longer than {cell_timeout} s"
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error" and out.get("ename") == "NotRun":
            return str(out.get("evalue", ""))
        if out.get("output_type") == "error":
            ename, evalue = out.get("ename", "Error"), str(out.get("evalue", "")).strip()
            text = f"{ename}: {evalue}" if evalue else ename
            text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\n", " ")
            return text[:200]
    return ""


def autograde_one(workdir: Path, chapter: str, cell_timeout: int) -> None:
    """In the worker process: nbgrader autograde + generate_feedback for one submission."""
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateFeedback

    _nbgrader_environment()
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s %(name)s] %(message)s")
    result = {"ok": False}
    try:
        _run_converter(Autograde, workdir, chapter, STUDENT_ID, cell_timeout=cell_timeout)
    except Exception as e:
        result["error"] = f"grading failed: {e}"
    graded = workdir / "autograded" / STUDENT_ID / chapter / f"{chapter}.ipynb"
    if graded.exists():
        nb = nbformat.read(graded, as_version=4)
        errors = {nbgrader_meta(c).get("grade_id"): _error_text(c, cell_timeout) for c in nb.cells if is_graded(c)}
        with Gradebook(f"sqlite:///{workdir / 'gradebook.db'}", COURSE_ID) as gb:
            sub = gb.find_submission_notebook(chapter, chapter, STUDENT_ID)
            scores = {g.name: (g.auto_score, g.max_score) for g in sub.grades}
        order = [e["grade_id"] for e in exercises(nbformat.read(
            workdir / "release" / chapter / f"{chapter}.ipynb", as_version=4))]
        result["grades"] = [{"grade_id": gid, "points": scores[gid][0], "max_points": scores[gid][1],
                             "message": errors.get(gid, "")} for gid in order if gid in scores]
        result["ok"] = True
        try:
            _run_converter(GenerateFeedback, workdir, chapter, STUDENT_ID)
        except Exception as e:  # feedback is a courtesy: the grades stand without it
            result["feedback_error"] = f"{type(e).__name__}: {e}"
    (workdir / "result.json").write_text(json.dumps(result))


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:  # the kernel runs in its own session: kill it explicitly
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _prepare(s: Submission, template: Path, source_nb, schedule: str) -> Path:
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
    return work


def _worker(work: Path, chapter: str, cell_timeout: int, env: dict) -> None:
    """Body of the forked process that grades one submission (its own session and log)."""
    os.setsid()  # its own process group; the kernel gets another one, killed via the tree
    fd = os.open(work / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(work)
    sys.path.insert(0, str(REPO))  # nbgrader imports tools.assignments.RobustExecute by name
    try:
        autograde_one(work, chapter, cell_timeout)
    except BaseException:
        import traceback
        traceback.print_exc()
        raise


def _run_workers(tasks: list, jobs: int, time_limit: float, cell_timeout: int, env: dict) -> dict:
    """Run each task (key, work dir, chapter) in its own forked process, ``jobs`` at a time.

    A process that runs longer than ``time_limit`` is killed with its kernel. Returns
    {key: (exit code or None if killed, seconds)}.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the parent has nbgrader imported already
    pending, running, done = list(tasks), {}, {}
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                key, work, chapter = pending.pop(0)
                proc = ctx.Process(target=_worker, args=(work, chapter, cell_timeout, env))
                proc.start()
                running[key] = (proc, time.monotonic())
            time.sleep(0.2)
            for key, (proc, started) in list(running.items()):
                elapsed = time.monotonic() - started
                if not proc.is_alive():
                    proc.join()
                    done[key] = (proc.exitcode, elapsed)
                    del running[key]
                elif elapsed > time_limit:
                    _kill_tree(proc.pid)
                    proc.join()
                    done[key] = (None, elapsed)
                    del running[key]
    finally:  # interrupted (Ctrl-C): leave no worker or kernel behind
        for proc, _ in running.values():
            _kill_tree(proc.pid)
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


def _fmt(x) -> str:
    if x is None or x == "":
        return ""
    return str(int(x)) if float(x).is_integer() else f"{float(x):.2f}"


def grade(submissions: Path, out: Path, source: Path = CHAPTERS, only: list[str] | None = None,
          cell_timeout: int = 300, time_limit: float = 1800, jobs: int = 1,
          schedule: str = "ci") -> list[dict]:
    """Grade every notebook under ``submissions``; write ``out/grades.csv`` and feedback."""
    submissions, out = Path(submissions).resolve(), Path(out).resolve()
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
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")

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
                    tasks.append((id(s), _prepare(s, Path(tmp), sources[s.chapter]["nb"], schedule),
                                  s.chapter))
                except Exception as e:
                    s.error = f"not graded: {type(e).__name__}: {e}"
        works = {key: work for key, work, _ in tasks}
        for key, (exitcode, seconds) in _run_workers(tasks, jobs, time_limit, cell_timeout, env).items():
            results[key] = _result(works[key], exitcode, seconds, time_limit)
        for s in subs:
            rows.extend(_report(s, results.get(id(s)), sources, out))
    _write_csv(rows, out / "grades.csv")
    _write_summaries(rows, out)
    return rows


def _report(s: Submission, result: dict | None, sources: dict, out: Path) -> list[dict]:
    """Rows for one submission; copies its feedback and autograded notebook into ``out``."""
    base = {"student": s.student, "file": s.rel, "seconds": (result or {}).get("seconds", "")}
    if s.error is not None:
        return [dict(base, chapter=s.chapter or "", exercise="", points=0, max_points="",
                     message=s.error)]
    note = "; ".join(s.messages)
    work = Path(result["work"]) if result and result.get("work") else None
    try:
        if result and result.get("ok"):
            rows = []
            for g in result["grades"]:
                msg = g["message"]
                if g["points"] is None:
                    msg = "needs manual grading"
                rows.append(dict(base, chapter=s.chapter, exercise=exercise_name(g["grade_id"]),
                                 points=_fmt(g["points"]), max_points=_fmt(g["max_points"]),
                                 message="; ".join(m for m in [msg, note] if m)))
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
                     max_points=_fmt(e["points"]), message="; ".join(m for m in [error, note] if m))
                for e in sources[s.chapter]["exercises"]]
    finally:
        if work is not None and not os.environ.get("ASSIGNMENTS_KEEP_WORK"):  # set it to debug
            shutil.rmtree(work, ignore_errors=True)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def _totals(rows: list[dict]) -> dict:
    totals = {}
    for r in rows:
        key = (r["student"], r["chapter"], r["file"])
        t = totals.setdefault(key, [0.0, 0.0])
        t[0] += float(r["points"] or 0)
        t[1] += float(r["max_points"] or 0)
    return totals


def _write_summaries(rows: list[dict], out: Path) -> None:
    by_student = {}
    for r in rows:
        by_student.setdefault(r["student"], []).append(r)
    for student, rs in by_student.items():
        lines = [f"# Feedback for {student}", ""]
        for (st, chapter, file), (pts, mx) in _totals(rs).items():
            lines += [f"## {chapter or file}: {_fmt(pts)} / {_fmt(mx)} points", "",
                      f"Submitted file: `{file}`."]
            if chapter and (out / "feedback" / student / f"{chapter}.html").exists():
                lines.append(f"Your notebook, as graded, with the tests' output: `{chapter}.html`.")
            lines.append("")
            for r in rs:
                if r["file"] != file:
                    continue
                if r["exercise"]:
                    lines.append(f"- `{r['exercise']}`: {r['points']} / {r['max_points']}"
                                 + (f" ({r['message']})" if r["message"] else ""))
                else:
                    lines.append(f"- {r['message']}")
            lines.append("")
        d = out / "feedback" / student
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.md").write_text("\n".join(lines), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# nbgrader Execute that survives a dead kernel
# ----------------------------------------------------------------------------------------------

def _robust_execute_class():
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbformat.v4 import new_output
    from nbgrader.preprocessors import Execute

    class RobustExecute(Execute):
        """nbgrader's Execute, except that a kernel that dies (segfault, os._exit, out of memory)
        or stops responding (a cell that times out and ignores the interrupt) fails the cell it
        was running and every later code cell, instead of aborting the whole submission:
        exercises that passed before keep their points."""

        def preprocess(self, nb, resources=None, km=None):
            self._stopped = None
            return super().preprocess(nb, resources, km)

        def preprocess_cell(self, cell, resources, index):
            if self._stopped is not None:
                if cell.cell_type == "code":
                    cell.outputs = [new_output("error", ename="NotRun", evalue=self._stopped,
                                               traceback=[])]
                return cell, resources
            try:
                return super().preprocess_cell(cell, resources, index)
            except (DeadKernelError, CellTimeoutError) as e:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                where = f"cell {index}" + (f" ({gid})" if gid else "")
                if isinstance(e, DeadKernelError):
                    ename, what = "DeadKernelError", "the kernel died (crashed or was killed)"
                    self._stopped = f"not run: the kernel died in {where}"
                else:
                    ename, what = "CellTimeoutError", (f"the cell ran longer than {self.timeout} s "
                                                       "and the kernel ignored the interrupt")
                    self._stopped = f"not run: the kernel stopped responding in {where}"
                cell.outputs.append(new_output("error", ename=ename, evalue=what, traceback=[]))
                return cell, resources

    return RobustExecute


def __getattr__(name):  # RobustExecute imports nbgrader lazily: `release --help` stays fast
    if name == "RobustExecute":
        cls = _robust_execute_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _chapters_arg(value: str | None) -> list[str] | None:
    return [c.strip().removesuffix(".ipynb") for c in value.split(",") if c.strip()] if value else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.assignments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("release", help="generate the student notebooks (nbgrader generate_assignment)")
    r.add_argument("--chapters", help="comma-separated chapter stems (default: all)")
    r.add_argument("--source", type=Path, default=CHAPTERS, help="chapter notebooks (default: notebooks/)")
    r.add_argument("--out", type=Path, default=STUDENT, help="output folder (default: student/)")
    r.add_argument("--check", action="store_true", help="write nothing; exit 1 if out of date")

    g = sub.add_parser("grade", help="autograde a folder of submitted notebooks")
    g.add_argument("submissions", type=Path)
    g.add_argument("--out", type=Path, required=True, help="folder for grades.csv and feedback/")
    g.add_argument("--chapters", help="the assigned chapters (default: any chapter)")
    g.add_argument("--source", type=Path, default=CHAPTERS, help="chapter notebooks (default: notebooks/)")
    g.add_argument("--schedule", choices=["ci", "full"], default="ci",
                   help="ci (default): apply the chapter's nbmake mocks, as CI does; full: as written")
    g.add_argument("--cell-timeout", type=int, default=300, help="seconds per cell (default 300)")
    g.add_argument("--time-limit", type=float, default=1800,
                   help="seconds per submission, whole notebook (default 1800)")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel (default 1)")

    ls = sub.add_parser("list", help="the chapters' autograded exercises and their points")
    ls.add_argument("--source", type=Path, default=CHAPTERS, help="chapter notebooks (default: notebooks/)")

    a = p.parse_args(argv)
    try:
        return _main(a)
    except NbgraderFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(a) -> int:
    if a.command == "list":
        for stem, path in chapter_notebooks(a.source).items():
            exs = exercises(nbformat.read(path, as_version=4))
            total = sum(float(e["points"] or 0) for e in exs)
            print(f"{stem:28} {len(exs)} exercises, {_fmt(total):>3} points: "
                  + ", ".join(f"{e['id']} ({_fmt(e['points'])})" for e in exs))
        return 0
    if a.command == "release":
        differ, errors = release(a.source, a.out, _chapters_arg(a.chapters), check=a.check)
        for stem, error in errors.items():
            print(f"error: {error}", file=sys.stderr)
        if a.check:
            if differ:
                print("out of date (run `python -m tools.assignments release`):\n  " + "\n  ".join(differ))
            else:
                print(f"{a.out}: up to date" + (" (except the chapters above)" if errors else ""))
        else:
            print("\n".join(f"wrote {d}" for d in differ) or f"{a.out}: already up to date")
        return 1 if errors or (a.check and differ) else 0
    if a.command == "grade":
        rows = grade(a.submissions, a.out, a.source, _chapters_arg(a.chapters), a.cell_timeout,
                     a.time_limit, a.jobs, a.schedule)
        for (student, chapter, file), (pts, mx) in sorted(_totals(rows).items()):
            msgs = sorted({r["message"] for r in rows if r["file"] == file and r["message"]})
            print(f"{student:20} {chapter or '-':24} {_fmt(pts):>6} / {_fmt(mx):<6} {file}"
                  + (f"  [{'; '.join(msgs)[:100]}]" if msgs else ""))
        print(f"wrote {a.out / 'grades.csv'} and {a.out / 'feedback'}/")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
