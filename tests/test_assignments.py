"""Tests of the assignments pipeline (tools/assignments.py, built on nbgrader).

Two kinds:
- every chapter in notebooks/: exercise metadata, the committed student notebook is what
  `release` generates, and the student notebook, autograded on the CI schedule, scores zero
  with every graded cell failing with NotImplementedError (and no other cell failing);
- grading mechanics, on the tiny fixture chapter tests/fixtures/chapters/99_sample.ipynb
  (standard library only, seconds per submission): full marks, zero, one exercise solved, an
  infinite loop, a kernel that ignores interrupts, a kernel crash, malformed files.

The expensive steps (nbgrader runs) happen once per session in fixtures; tests read their results.
"""
import copy
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tools import assignments as asg  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "chapters" / "99_sample.ipynb"
CHAPTERS = asg.chapter_notebooks()
STEMS = list(CHAPTERS)
# With pytest-xdist, keep this module's tests on one worker (--dist loadgroup): the session
# fixtures below are expensive and should run once.
pytestmark = pytest.mark.xdist_group("assignments")

# Grading-mechanics limits for the fixture chapter: its cells take milliseconds, a submission
# a few seconds (kernel start-up included), more when the machine is busy.
CELL_TIMEOUT = 10
TIME_LIMIT = 600
# The whole-notebook limit is tested in a separate run, with a cell timeout too long to help.
SHORT_TIME_LIMIT = 90


def _env():
    env = dict(os.environ)
    mirror = REPO.parent / "shared" / "data"  # CI sets BOOK_DATA_MIRROR=../shared/data
    if "BOOK_DATA_MIRROR" not in env and mirror.is_dir():
        env["BOOK_DATA_MIRROR"] = str(mirror)
    return env


def _cli(*args, timeout):
    proc = subprocess.run([sys.executable, "-m", "tools.assignments", *map(str, args)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


class _Run:
    """A `python -m tools.assignments` run in the background (its output in a log file)."""

    def __init__(self, log: Path, *args):
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "tools.assignments", *map(str, args)],
                                         cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)

    def wait(self, timeout=1800):
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, self.log.read_text()[-3000:]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _cell(nb, grade_id):
    return next(c for c in nb.cells if asg.nbgrader_meta(c).get("grade_id") == grade_id)


# ----------------------------------------------------------------------------------------------
# Every chapter
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """All the expensive work, started together so that waiting overlaps computing:

    - `release` of the current chapters into a temporary folder (compared with student/);
    - every chapter's student notebook, submitted as is, autograded on the CI schedule;
    - the fixture chapter's sample submissions graded, and the time-limit run.
    """
    root = tmp_path_factory.mktemp("assignments")
    released = root / "release" / "student"
    _, errors = asg.release(out=released) if STEMS else ([], {})
    stems = [stem for stem in STEMS if stem not in errors]
    students = root / "chapter-submissions" / "stub"
    students.mkdir(parents=True)
    for stem in stems:
        shutil.copyfile(released / f"{stem}.ipynb", students / f"{stem}.ipynb")
    chapter_run = None
    if stems:
        chapter_run = _Run(root / "chapters.log", "grade", students.parent, "--out", root / "chapter-out",
                           "--jobs", 2, "--cell-timeout", 600, "--time-limit", 1200)
    try:
        fixture = _fixture_runs(root / "fixture")
        if chapter_run is not None:
            chapter_run.wait()
    finally:
        if chapter_run is not None and chapter_run.proc.poll() is None:
            chapter_run.proc.kill()
    return {"released": released, "release_errors": errors, "chapter_out": root / "chapter-out",
            "fixture": fixture}


@pytest.fixture
def fresh_release(runs, request):
    stem = request.node.callspec.params.get("stem")
    if stem in runs["release_errors"]:
        pytest.fail(runs["release_errors"][stem])
    return runs["released"]


@pytest.fixture
def graded_students(runs):
    return runs["chapter_out"]


@pytest.fixture
def fixture_grades(runs):
    return runs["fixture"]


@pytest.mark.parametrize("stem", STEMS)
def test_chapter_exercise_metadata(stem):
    """At least three autograded exercises, each a solution cell then its locked test cell."""
    nb = nbformat.read(CHAPTERS[stem], as_version=4)
    ids = asg.grade_ids(nb)
    assert len(ids) == len(set(ids)), f"duplicate grade ids: {ids}"
    exercises = asg.exercises(nb)
    assert len(exercises) >= 3, "CONTRIBUTING.md: at least three autograded exercises"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for ex in exercises:
        test = nb.cells[ex["index"]]
        meta = asg.nbgrader_meta(test)
        assert re.fullmatch(r"[a-z][a-z0-9_]*_tests", meta["grade_id"]), meta["grade_id"]
        assert isinstance(meta.get("points"), int) and meta["points"] > 0, meta
        assert meta.get("locked") is True and meta.get("schema_version") == 3, meta
        assert "### BEGIN HIDDEN TESTS" in test.source and "### END HIDDEN TESTS" in test.source
        previous = nb.cells[code[code.index(ex["index"]) - 1]]
        smeta = asg.nbgrader_meta(previous)
        assert smeta.get("grade_id") == f"{ex['id']}_solution", (
            f"the code cell before {meta['grade_id']} must be its solution cell {ex['id']}_solution")
        assert smeta.get("solution") is True and smeta.get("grade") is False, smeta
        assert smeta.get("locked") is False and smeta.get("schema_version") == 3, smeta
        assert "### BEGIN SOLUTION" in previous.source and "### END SOLUTION" in previous.source


@pytest.mark.parametrize("stem", STEMS)
def test_markers_only_in_exercise_cells(stem):
    """nbgrader treats any line containing a marker as a marker, even in prose."""
    assert asg.marker_problems(nbformat.read(CHAPTERS[stem], as_version=4)) == []


@pytest.mark.parametrize("stem", STEMS)
def test_student_notebook_is_committed_and_up_to_date(stem, fresh_release):
    committed = asg.STUDENT / f"{stem}.ipynb"
    assert committed.exists(), f"{committed} missing: run `python -m tools.assignments release`"
    assert committed.read_bytes() == (fresh_release / f"{stem}.ipynb").read_bytes(), (
        f"{committed} is out of date: run `python -m tools.assignments release`")


def test_no_stale_student_notebooks():
    stale = [p.name for p in asg.STUDENT.glob("*.ipynb") if p.stem not in CHAPTERS]
    assert not stale, f"student notebooks without a chapter: {stale} (run the release command)"


@pytest.mark.parametrize("stem", STEMS)
def test_student_notebook_content(stem, fresh_release):
    nb = nbformat.read(fresh_release / f"{stem}.ipynb", as_version=4)
    text = nbformat.writes(nb)
    badge = f"/blob/main/student/{stem}.ipynb)"
    assert badge in nb.cells[0].source, "the student notebook's badge must open the student copy"
    for marker in ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"]:
        assert marker not in text
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        meta = asg.nbgrader_meta(cell)
        if meta:
            assert meta.get("checksum"), "nbgrader checksums missing"
        if meta.get("solution"):
            assert "raise NotImplementedError()" in cell.source
        if meta.get("grade"):
            assert meta.get("locked") and cell.metadata.get("editable") is False


@pytest.mark.parametrize("stem", STEMS)
def test_student_notebook_fails_only_with_not_implemented(stem, fresh_release, graded_students):
    """Run on the CI schedule, each graded test cell fails with NotImplementedError from the stub
    (a test that passes on the stub checks nothing), the score is zero, and no other exercise
    cell fails."""
    rows = [r for r in _read_csv(graded_students / "grades.csv") if r["chapter"] == stem]
    nb = nbformat.read(CHAPTERS[stem], as_version=4)
    assert [r["exercise"] for r in rows] == [e["id"] for e in asg.exercises(nb)], rows
    for r in rows:
        assert r["points"] == "0" and r["message"] == "NotImplementedError", r
    # In the exercises, nothing but the graded cells may fail (e.g. no demo call of a stub).
    # Cells before them are the build's business (it runs the chapter).
    graded = nbformat.read(graded_students / "autograded" / "stub" / f"{stem}.ipynb", as_version=4)
    first = min((i for i, c in enumerate(graded.cells) if asg.nbgrader_meta(c)), default=len(graded.cells))
    for i, cell in enumerate(graded.cells[first:], first):
        if cell.cell_type == "code" and not asg.is_graded(cell):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"cell {i} fails in the student notebook: {asg._error_text(cell, 0)}"


# ----------------------------------------------------------------------------------------------
# Grading mechanics, on the fixture chapter
# ----------------------------------------------------------------------------------------------

def _sample_submissions(sol, stu, folder: Path):
    """Notebooks as students would hand them in (the tests below say what each should get)."""
    def write(name, nb):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)

    def variant(base, **sources):
        nb = copy.deepcopy(base)
        for gid, source in sources.items():
            _cell(nb, gid).source = source
        return nb

    write("solved.ipynb", sol)
    write("dave/99_sample.ipynb", sol)  # one folder per student (e.g. a shared drive)
    write("stub.ipynb", stu)
    write("one_99_sample.ipynb",
          variant(stu, variance_solution=_cell(sol, "variance_solution").source))
    tampered = variant(stu, variance_solution=_cell(sol, "variance_solution").source,
                       mean_of_tests="pass  # the student emptied the locked test cell")
    pasted = copy.deepcopy(_cell(tampered, "standardise_solution"))  # a copy-pasted exercise cell
    pasted["id"] = "pasted"
    tampered.cells.insert(9, pasted)
    write("tampered.ipynb", tampered)
    write("loop.ipynb", variant(sol, variance_solution=(
        "import time\n\ndef population_variance(values):\n    while True:\n        time.sleep(0.01)")))
    write("unresponsive.ipynb", variant(sol, variance_solution=(  # swallows the interrupt
        "import time\n\ndef population_variance(values):\n    while True:\n        try:\n"
        "            time.sleep(0.1)\n        except BaseException:\n            pass")))
    write("crash.ipynb", variant(sol, standardise_solution="import os\nos._exit(1)"))
    deleted = json.loads(nbformat.writes(sol))  # saved as Colab does: nbformat 4.4, no cell ids
    deleted["nbformat_minor"] = 4
    deleted["metadata"]["colab"] = {"provenance": []}
    for cell in deleted["cells"]:
        cell.pop("id")
    deleted["cells"] = [c for c in deleted["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id")
                        not in ("variance_solution", "variance_tests", "mean_of_tests")]
    (folder / "deleted.ipynb").write_text(json.dumps(deleted), encoding="utf-8")
    (folder / "notjson.ipynb").write_text('{"cells": [', encoding="utf-8")
    write("other.ipynb", _other_chapter(sol))
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    write("plain.ipynb", plain)


def _other_chapter(nb):
    other = copy.deepcopy(nb)
    for cell in other.cells:
        meta = asg.nbgrader_meta(cell)
        if meta:
            meta["grade_id"] = "other_" + meta["grade_id"]
    other.cells[0].source = other.cells[0].source.replace("99_sample", "98_other")
    return other


def _fixture_runs(root: Path) -> dict:
    chapters = root / "chapters"
    chapters.mkdir(parents=True)
    shutil.copyfile(FIXTURE, chapters / FIXTURE.name)
    sol = nbformat.read(FIXTURE, as_version=4)
    nbformat.write(_other_chapter(sol), chapters / "98_other.ipynb")
    _cli("release", "--source", chapters, "--out", root / "student", "--chapters", "99_sample",
         timeout=300)
    stu = nbformat.read(root / "student" / "99_sample.ipynb", as_version=4)
    subs = root / "submissions"
    _sample_submissions(sol, stu, subs)
    # Time-limit run: a notebook that never ends, with a cell timeout longer than the
    # whole-notebook limit, next to a good one. It mostly waits, alongside the main run.
    slow = root / "slow-submissions"
    forever = copy.deepcopy(sol)
    forever.cells[1].source += "\nimport time\nwhile True:\n    time.sleep(0.1)"  # the setup cell
    (slow / "forever").mkdir(parents=True)
    nbformat.write(forever, slow / "forever" / "99_sample.ipynb")
    nbformat.write(sol, slow / "alongside.ipynb")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()}
    slow_run = _Run(root / "slow.log", "grade", slow, "--out", root / "slow-out", "--source", chapters,
                    "--cell-timeout", 3600, "--time-limit", SHORT_TIME_LIMIT, "--jobs", 2)
    try:
        main_run = _Run(root / "main.log", "grade", subs, "--out", root / "out", "--source", chapters,
                        "--chapters", "99_sample", "--cell-timeout", CELL_TIMEOUT,
                        "--time-limit", TIME_LIMIT, "--jobs", 2)
        main_run.wait()
    finally:
        slow_run.wait()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in subs.rglob("*") if p.is_file()}
    rows = _read_csv(root / "out" / "grades.csv") + _read_csv(root / "slow-out" / "grades.csv")
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    return {"rows": rows, "by_file": by_file, "before": before, "after": after, "out": root / "out",
            "student": stu, "sol": sol}


def _points(rows):
    return {r["exercise"]: float(r["points"]) for r in rows}


FULL = {"mean_of": 2.0, "variance": 3.0, "standardise": 5.0}


def test_fixture_student_version(fixture_grades):
    stu, sol = fixture_grades["student"], fixture_grades["sol"]
    assert "/blob/main/student/99_sample.ipynb)" in stu.cells[0].source
    assert "BEGIN HIDDEN TESTS" not in _cell(stu, "mean_of_tests").source
    assert "statistics.fmean(xs)" in _cell(sol, "mean_of_tests").source  # the hidden test
    assert "raise NotImplementedError()" in _cell(stu, "mean_of_solution").source


def test_csv_columns(fixture_grades):
    with open(fixture_grades["out"] / "grades.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["student", "chapter", "exercise", "points", "max_points"]


def test_solution_gets_full_marks(fixture_grades):
    for file in ["solved.ipynb", "dave/99_sample.ipynb"]:
        rows = fixture_grades["by_file"][file]
        assert _points(rows) == FULL and all(r["message"] == "" for r in rows), rows
        assert {r["max_points"] for r in rows} == {"2", "3", "5"}
        assert {r["chapter"] for r in rows} == {"99_sample"}
    assert {r["student"] for r in fixture_grades["by_file"]["dave/99_sample.ipynb"]} == {"dave"}
    assert (fixture_grades["out"] / "feedback" / "solved" / "99_sample.html").exists()
    assert "10 / 10" in (fixture_grades["out"] / "feedback" / "solved" / "summary.md").read_text()


def test_student_version_gets_zero(fixture_grades):
    rows = fixture_grades["by_file"]["stub.ipynb"]
    assert _points(rows) == dict.fromkeys(FULL, 0.0)
    assert {r["message"] for r in rows} == {"NotImplementedError"}


def test_one_exercise_solved_gets_exactly_its_points(fixture_grades):
    rows = fixture_grades["by_file"]["one_99_sample.ipynb"]
    assert _points(rows) == {"mean_of": 0.0, "variance": 3.0, "standardise": 0.0}
    assert {r["student"] for r in rows} == {"one"}  # the chapter name is stripped from the file name


def test_edited_tests_are_restored_and_duplicated_cells_ignored(fixture_grades):
    rows = fixture_grades["by_file"]["tampered.ipynb"]
    assert _points(rows) == {"mean_of": 0.0, "variance": 3.0, "standardise": 0.0}


def test_hidden_tests_are_reinserted(fixture_grades):
    """The graded notebook contains the hidden tests, though the submission did not."""
    graded = nbformat.read(fixture_grades["out"] / "autograded" / "stub" / "99_sample.ipynb",
                           as_version=4)
    assert "statistics.fmean(xs)" in _cell(graded, "mean_of_tests").source


def test_infinite_loop_is_interrupted_and_the_rest_graded(fixture_grades):
    rows = fixture_grades["by_file"]["loop.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 0.0, "standardise": 5.0}
    assert "timed out" in next(r for r in rows if r["exercise"] == "variance")["message"]


def test_unresponsive_kernel_is_stopped_and_the_rest_scored(fixture_grades):
    rows = fixture_grades["by_file"]["unresponsive.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 0.0, "standardise": 0.0}
    messages = {r["exercise"]: r["message"] for r in rows}
    assert "timed out" in messages["variance"]
    assert "stopped responding" in messages["standardise"]


def test_endless_notebook_is_stopped_at_the_time_limit(fixture_grades):
    rows = fixture_grades["by_file"]["forever/99_sample.ipynb"]
    assert _points(rows) == dict.fromkeys(FULL, 0.0)
    assert all("time limit" in r["message"] for r in rows), rows
    assert float(rows[0]["seconds"]) < SHORT_TIME_LIMIT + 30
    assert _points(fixture_grades["by_file"]["alongside.ipynb"]) == FULL  # graded all the same


def test_kernel_crash_is_scored(fixture_grades):
    rows = fixture_grades["by_file"]["crash.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 3.0, "standardise": 0.0}
    assert "kernel died" in next(r for r in rows if r["exercise"] == "standardise")["message"]


def test_deleted_cells_are_reported_and_the_rest_graded(fixture_grades):
    rows = fixture_grades["by_file"]["deleted.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 0.0, "standardise": 5.0}
    assert all("cells deleted" in r["message"] for r in rows), rows


@pytest.mark.parametrize("file, expected", [
    ("notjson.ipynb", "not valid JSON"),
    ("other.ipynb", "wrong chapter"),
    ("plain.ipynb", "no exercise of any chapter"),
])
def test_malformed_file_gets_a_message(fixture_grades, file, expected):
    rows = fixture_grades["by_file"][file]
    assert len(rows) == 1 and expected in rows[0]["message"] and rows[0]["points"] == "0", rows
    summary = fixture_grades["out"] / "feedback" / Path(file).stem / "summary.md"
    assert expected in summary.read_text()


def test_submissions_are_not_modified(fixture_grades):
    assert fixture_grades["before"] == fixture_grades["after"]
