"""What release and grade share: the chapters, their exercises, and nbgrader course folders."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
CHAPTERS = REPO / "notebooks"
STUDENT = REPO / "student"
CHAPTER_RE = re.compile(r"^\d\d_\w+$")
COURSE_ID = "interactive-pytorch"
STUDENT_ID = "student"  # nbgrader's id for the one student of each throw-away course


# ----------------------------------------------------------------------------------------------
# Chapters and their exercises
# ----------------------------------------------------------------------------------------------

def chapter_notebooks(source: Path = CHAPTERS, only: list[str] | None = None) -> dict[str, Path]:
    """The chapter notebooks by stem, in reading order.

    For the book's own notebooks/ the chapters are those listed in _toc.yml (tools.build's one
    list of chapters) that exist; for another folder (a private fork's, or the tests' fixtures),
    its ``NN_topic.ipynb`` files in name order.
    """
    source = Path(source)
    if source.resolve() == CHAPTERS.resolve():
        from tools.build import chapters

        listed = [p for p in chapters() if CHAPTER_RE.match(p.stem)]
        found = {p.stem: source / p.name for p in listed if (source / p.name).exists()}
    else:
        found = {p.stem: p for p in sorted(source.glob("*.ipynb")) if CHAPTER_RE.match(p.stem)}
    if only:
        missing = [c for c in only if c not in found]
        if missing:
            where = ("listed in _toc.yml" if source.resolve() == CHAPTERS.resolve()
                     else f"in {source}")
            raise SystemExit(f"unknown chapter(s) {', '.join(missing)}; chapters {where} with a "
                             f"notebook: {', '.join(found) or 'none'}")
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
    for suffix in ("_tests", "_solution"):
        if grade_id.endswith(suffix):
            return grade_id[: -len(suffix)]
    return grade_id


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


def fmt(x) -> str:
    if x is None or x == "":
        return ""
    return str(int(x)) if float(x).is_integer() else f"{float(x):.2f}"


# ----------------------------------------------------------------------------------------------
# nbgrader course directories
# ----------------------------------------------------------------------------------------------

def alembic_head() -> str:
    """The newest revision of nbgrader's gradebook migrations, read in this process."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    settings = Config()
    settings.set_main_option("script_location", ALEMBIC_DIR)
    return ScriptDirectory.from_config(settings).get_current_head()


def nbgrader_environment() -> None:
    # nbgrader stamps every new gradebook with this revision, read by starting the `alembic`
    # script (a whole Python process, seconds of CPU per grading run, and only found when the
    # venv is on PATH): read it here instead.
    import nbgrader.api

    nbgrader.api.get_alembic_version = alembic_head
    logging.getLogger("traitlets").setLevel(logging.WARNING)


def config(root: Path, assignment: str, student: str | None = None):
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    c.CourseDirectory.assignment_id = assignment
    if student is not None:
        c.CourseDirectory.student_id = student
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


def run_converter(cls, root: Path, assignment: str, student: str | None = None, c=None) -> None:
    """Run one nbgrader converter; on failure raise NbgraderFailed with nbgrader's own reason."""
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    c = c if c is not None else config(root, assignment, student)
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

    nbgrader_environment()
    released, errors = {}, {}
    for stem, path in chapters.items():
        (root / "source" / stem).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / "source" / stem / f"{stem}.ipynb")
        try:
            run_converter(GenerateAssignment, root, stem)
            released[stem] = root / "release" / stem / f"{stem}.ipynb"
        except NbgraderFailed as e:
            hints = marker_problems(nbformat.read(path, as_version=4))
            errors[stem] = str(e) + (f" ({'; '.join(hints)})" if hints else "")
    return released, errors
