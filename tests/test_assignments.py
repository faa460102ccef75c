"""Tests of the assignments pipeline (tools/assignments/, built on nbgrader).

Two kinds:
- every chapter in notebooks/, read but never executed here: exercise metadata, marker strings,
  and the committed student notebook is what `release` generates (the build executes each
  chapter once, and checks there that every test cell fails on the student's stub with
  NotImplementedError and nothing else);
- grading, on the tiny fixture chapter tests/fixtures/chapters/99_sample.ipynb (standard
  library only, seconds per submission), in one `grade` run with two kernels at a time: full
  marks, zero, one exercise solved, an error in the student's own cell named first, an infinite
  loop, a kernel that ignores interrupts, a kernel crash, deleted cells, malformed files; and
  hostile submissions (tests/fixtures/hostile.py: reading the source notebook or another
  student's file, writing the gradebook or the grades, the network, killing the grader, a fork
  bomb, memory, a busy loop) graded between honest ones, which must come out exactly as when
  graded alone. Two runs of their own go on in the background while the submissions are
  written: a notebook that never ends, stopped at a 10 s time limit, and a solved notebook
  graded with --unsafe-no-sandbox.

The expensive steps happen once per session in fixtures; tests read their results.
"""
import copy
import csv
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tools import assignments as asg  # noqa: E402
from tools.assignments import grade as grading  # noqa: E402
from tools.assignments import sandbox  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import hostile  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "chapters" / "99_sample.ipynb"
CHAPTERS = asg.chapter_notebooks()
STEMS = list(CHAPTERS)

# Limits of the grading run, in seconds. The fixture's cells take milliseconds and a
# submission a few seconds of CPU (kernel start-up included); the margins are for a busy machine.
CELL_TIMEOUT = 5
TIME_LIMIT = 300  # per submission, in the main run: nothing there should come near it
SHORT_TIME_LIMIT = 10  # in the run of the notebook that never ends
MEMORY_GIB = 1.5
PROCESSES = 64
FULL = {"mean_of": 2.0, "variance": 3.0, "standardise": 5.0}
HONEST_MARK = "# honest work: 7f3a9c"  # in the honest notebooks only; must not leak


def _env():
    env = dict(os.environ)
    env.pop("ASSIGNMENTS_KEEP_WORK", None)
    return env


def _cli(*args, timeout=600):
    """`python -m tools.assignments ...`; returns the finished process and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tools.assignments", *map(str, args)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _cell(nb, grade_id):
    return next(c for c in nb.cells if asg.nbgrader_meta(c).get("grade_id") == grade_id)


def _hashes(*folders):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Every chapter (read, not executed)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def released(tmp_path_factory):
    """`release` of the current chapters into a temporary folder (compared with student/)."""
    out = tmp_path_factory.mktemp("release") / "student"
    _, errors = asg.release(out=out) if STEMS else ([], {})
    return {"out": out, "errors": errors}


@pytest.fixture
def fresh_release(released, request):
    stem = request.node.callspec.params.get("stem")
    if stem in released["errors"]:
        pytest.fail(released["errors"][stem])
    return released["out"]


def test_chapters_come_from_the_toc():
    from tools.build import chapters

    listed = [p.stem for p in chapters() if p.exists()]
    assert STEMS == listed, "tools.assignments must grade the chapters _toc.yml lists, in order"


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


# ----------------------------------------------------------------------------------------------
# Grading, on the fixture chapter
# ----------------------------------------------------------------------------------------------

def _variant(base, **sources):
    nb = copy.deepcopy(base)
    for gid, source in sources.items():
        _cell(nb, gid).source = source
    return nb


def _other_chapter(nb):
    other = copy.deepcopy(nb)
    for cell in other.cells:
        meta = asg.nbgrader_meta(cell)
        if meta:
            meta["grade_id"] = "other_" + meta["grade_id"]
    other.cells[0].source = other.cells[0].source.replace("99_sample", "98_other")
    return other


def _submissions(sol, stu, folder: Path, chapters: Path, out: Path, port: int):
    """Notebooks as students would hand them in (the tests below say what each should get)."""
    def write(name, nb):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)

    honest = _variant(sol, mean_of_solution=_cell(sol, "mean_of_solution").source + "\n" + HONEST_MARK)
    write("solved.ipynb", honest)
    write("zed/99_sample.ipynb", honest)  # one folder per student (e.g. a shared drive)
    write("stub.ipynb", stu)
    write("one_99_sample.ipynb", _variant(  # and a solution cell that does not even compile
        stu, variance_solution=_cell(sol, "variance_solution").source,
        standardise_solution="def standardise(values):\n        m = 0\n    return values"))
    tampered = _variant(stu, mean_of_tests="pass  # the student emptied the locked test cell",
                        variance_solution=(  # what no sandbox stops: a patch in the tests' kernel
                            "def population_variance(values):\n    return 0.0\n\n"
                            "math.isclose = lambda *args, **kwargs: True"))
    pasted = copy.deepcopy(_cell(tampered, "standardise_solution"))  # a copy-pasted exercise cell
    pasted["id"] = "pasted"
    tampered.cells.insert(9, pasted)
    write("tampered.ipynb", tampered)
    write("unresponsive.ipynb", _variant(sol, variance_solution=(  # swallows the interrupt
        "import time\n\ndef population_variance(values):\n    while True:\n        try:\n"
        "            time.sleep(0.1)\n        except BaseException:\n            pass")))
    write("crash.ipynb", _variant(sol, standardise_solution="import os\nos._exit(1)"))
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
    write("plain.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")]))
    # Hostile submissions (issue 18), three attacks each, one per exercise. Their names put
    # them between honest ones in the grading order (two at a time, by file name).
    write("mallory/99_sample.ipynb", _variant(
        sol, mean_of_solution=hostile.read_source(str(chapters)),
        variance_solution=hostile.read_other(str(folder / "solved.ipynb")),
        standardise_solution=hostile.tamper(str(out))))
    write("chuck.ipynb", _variant(
        sol, mean_of_solution=hostile.network(port),
        variance_solution=hostile.kill_parent([os.getpid(), os.getppid()]),
        standardise_solution=hostile.FORK_BOMB))
    write("oscar.ipynb", _variant(
        sol, mean_of_solution=hostile.MEMORY_HOG, variance_solution=hostile.BUSY_LOOP))


def _forever(sol, folder: Path):
    """A notebook whose every cell stays within the cell timeout, but too long in all."""
    forever = copy.deepcopy(sol)
    forever.cells[2:2] = [nbformat.v4.new_code_cell(f"import time\ntime.sleep({CELL_TIMEOUT - 1})")
                          for _ in range(SHORT_TIME_LIMIT // (CELL_TIMEOUT - 1) + 2)]
    (folder / "peggy").mkdir(parents=True)
    nbformat.write(forever, folder / "peggy" / "99_sample.ipynb")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The grading runs, once, never more than two kernels at a time: the time-limit run (one
    kernel, asleep) and the unsafe run start in the background while this process releases the
    fixture chapter and writes the submissions; then the main grading run, two kernels at a
    time. (The release of the book's chapters is a fixture of its own: tests of one chapter's
    student copy need no grading.)"""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    root = tmp_path_factory.mktemp("grading")
    chapters = root / "chapters"
    chapters.mkdir()
    (chapters / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    sol = nbformat.read(FIXTURE, as_version=4)
    nbformat.write(_other_chapter(sol), chapters / "98_other.ipynb")
    _forever(sol, root / "slow-submissions")
    (root / "unsafe-submissions").mkdir()
    nbformat.write(sol, root / "unsafe-submissions" / "solved.ipynb")
    background = {
        "slow": ["--time-limit", SHORT_TIME_LIMIT],
        "unsafe": ["--time-limit", TIME_LIMIT, "--unsafe-no-sandbox"],
    }
    for name, options in background.items():
        with open(root / f"{name}.log", "w") as log, open(root / f"{name}.err", "w") as err:
            background[name] = subprocess.Popen(
                [sys.executable, "-m", "tools.assignments", "grade", root / f"{name}-submissions",
                 "--out", root / f"{name}-out", "--source", chapters,
                 "--cell-timeout", str(CELL_TIMEOUT), *map(str, options)],
                cwd=REPO, env=_env(), stdout=log, stderr=err)
    try:
        _, errors = asg.release(source=chapters, out=root / "student", only=["99_sample"])
        assert not errors, errors
        stu = nbformat.read(root / "student" / "99_sample.ipynb", as_version=4)
        subs, out, canary = root / "submissions", root / "out", root / "canary"
        out.mkdir()
        (out / "previous.txt").write_text("an earlier run's file: the grader leaves it alone\n")
        canary.mkdir()
        (canary / "notes.txt").write_text("nothing may change this\n")
        # what the hostile notebook tries to reach
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        _submissions(sol, stu, subs, chapters, out, listener.getsockname()[1])
        before = _hashes(subs, chapters, canary)
    finally:  # never more than two kernels: the main run waits for these
        for process in background.values():
            process.wait(timeout=600)
    for name, process in background.items():
        assert process.returncode == 0, (root / f"{name}.err").read_text()[-3000:]
    started = time.monotonic()
    run, cpu = _cli("grade", subs, "--out", out, "--source", chapters, "--chapters", "99_sample",
                    "--cell-timeout", CELL_TIMEOUT, "--time-limit", TIME_LIMIT, "--jobs", 2,
                    "--memory-limit", MEMORY_GIB, "--max-processes", PROCESSES)
    seconds = time.monotonic() - started
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    try:
        listener.accept()
        reached = True
    except BlockingIOError:
        reached = False
    listener.close()
    after = _hashes(subs, chapters, canary)
    rows = _read_csv(out / "grades.csv") + _read_csv(root / "slow-out" / "grades.csv")
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    print(f"\n{run.stdout}main grade run: {len(by_file) - 1} files in {seconds:.0f} s, "
          f"{cpu:.0f} s of CPU; all runs: {total:.0f} s of CPU in subprocesses")
    graded = {"rows": rows, "by_file": by_file, "before": before, "after": after, "out": out,
              "root": root, "student": stu, "sol": sol, "stdout": run.stdout, "reached": reached}
    return graded


@pytest.fixture(scope="session")
def graded(runs):
    return runs


def _points(rows):
    return {r["exercise"]: float(r["points"]) for r in rows}


def _messages(rows):
    return {r["exercise"]: r["message"] for r in rows}


def _outputs(graded, student):
    """What the student's code printed, as graded (tracebacks, which quote the code, left out)."""
    nb = nbformat.read(graded["out"] / "autograded" / student / "99_sample.ipynb", as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_fixture_student_version(graded):
    stu, sol = graded["student"], graded["sol"]
    assert "/blob/main/student/99_sample.ipynb)" in stu.cells[0].source
    assert "BEGIN HIDDEN TESTS" not in _cell(stu, "mean_of_tests").source
    assert "statistics.fmean(xs)" in _cell(sol, "mean_of_tests").source  # the hidden test
    assert "raise NotImplementedError()" in _cell(stu, "mean_of_solution").source


def test_csv_columns(graded):
    with open(graded["out"] / "grades.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["student", "chapter", "exercise", "points", "max_points"]


def test_solution_gets_full_marks(graded):
    for file in ["solved.ipynb", "zed/99_sample.ipynb"]:
        rows = graded["by_file"][file]
        assert _points(rows) == FULL and all(r["message"] == "" for r in rows), rows
        assert {r["max_points"] for r in rows} == {"2", "3", "5"}
        assert {r["chapter"] for r in rows} == {"99_sample"}
    assert {r["student"] for r in graded["by_file"]["zed/99_sample.ipynb"]} == {"zed"}
    assert (graded["out"] / "feedback" / "solved" / "99_sample.html").exists()
    assert "10 / 10" in (graded["out"] / "feedback" / "solved" / "summary.md").read_text()


def test_student_version_gets_zero(graded):
    rows = graded["by_file"]["stub.ipynb"]
    assert _points(rows) == dict.fromkeys(FULL, 0.0)
    assert {r["message"] for r in rows} == {"NotImplementedError"}


def test_one_exercise_solved_gets_exactly_its_points(graded):
    rows = graded["by_file"]["one_99_sample.ipynb"]
    assert _points(rows) == {"mean_of": 0.0, "variance": 3.0, "standardise": 0.0}
    assert {r["student"] for r in rows} == {"one"}  # the chapter name is stripped from the file name


def test_error_in_the_students_own_cell_is_named_first(graded):
    """Issue 9: an IndentationError in the solution cell, not the test cell's NameError."""
    rows = graded["by_file"]["one_99_sample.ipynb"]
    message = _messages(rows)["standardise"]
    assert message.startswith("your solution cell failed: IndentationError: "), message
    assert "(line 3)" in message and "NameError" in message.split("then the test cell")[1]
    summary = (graded["out"] / "feedback" / "one" / "summary.md").read_text()
    body = summary.split("## 99_sample")[1]
    first = body.index("Fix first: exercise `standardise`")
    assert first < body.index("- `mean_of`") and "IndentationError" in body[first:].splitlines()[0]
    assert "NameError" not in body[first:].splitlines()[0]
    printed = next(line for line in graded["stdout"].splitlines() if "one_99_sample" in line)
    assert printed.index("IndentationError") < printed.index("NotImplementedError"), printed


def test_edited_tests_are_restored_and_duplicated_cells_ignored(graded):
    rows = graded["by_file"]["tampered.ipynb"]
    assert _points(rows) == {"mean_of": 0.0, "variance": 3.0, "standardise": 0.0}


def test_patching_the_tests_library_is_flagged_for_review(graded):
    """A sandbox cannot stop code that patches the kernel the tests run in (here math.isclose,
    so a wrong answer passes): the score table flags it for the instructor to read."""
    rows = graded["by_file"]["tampered.ipynb"]
    assert _points(rows)["variance"] == 3.0  # the cheat works...
    assert "for review: the code reassigns a library function" in _messages(rows)["variance"]
    assert "for review" not in _messages(graded["by_file"]["solved.ipynb"])["variance"]


def test_hidden_tests_are_reinserted(graded):
    """The graded notebook contains the hidden tests, though the submission did not."""
    graded_nb = nbformat.read(graded["out"] / "autograded" / "stub" / "99_sample.ipynb", as_version=4)
    assert "statistics.fmean(xs)" in _cell(graded_nb, "mean_of_tests").source


def test_infinite_loop_is_interrupted_and_the_rest_graded(graded):
    rows = graded["by_file"]["oscar.ipynb"]  # a busy loop (after a memory hog)
    assert _points(rows) == {"mean_of": 0.0, "variance": 0.0, "standardise": 5.0}
    assert "timed out" in _messages(rows)["variance"]


def test_unresponsive_kernel_is_stopped_and_the_rest_scored(graded):
    rows = graded["by_file"]["unresponsive.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 0.0, "standardise": 0.0}
    messages = _messages(rows)
    assert "timed out" in messages["variance"]
    assert messages["standardise"].startswith("not run: the kernel stopped responding")


def test_endless_notebook_is_stopped_at_the_time_limit(graded):
    rows = graded["by_file"]["peggy/99_sample.ipynb"]
    assert _points(rows) == dict.fromkeys(FULL, 0.0)
    assert all("time limit" in r["message"] for r in rows), rows
    assert SHORT_TIME_LIMIT <= float(rows[0]["seconds"]) < SHORT_TIME_LIMIT + 5


def test_kernel_crash_is_scored(graded):
    rows = graded["by_file"]["crash.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 3.0, "standardise": 0.0}
    assert "kernel died" in _messages(rows)["standardise"]


def test_deleted_cells_are_reported_and_the_rest_graded(graded):
    rows = graded["by_file"]["deleted.ipynb"]
    assert _points(rows) == {"mean_of": 2.0, "variance": 0.0, "standardise": 5.0}
    assert all("cells deleted" in r["message"] for r in rows), rows


@pytest.mark.parametrize("file, expected", [
    ("notjson.ipynb", "not valid JSON"),
    ("other.ipynb", "wrong chapter"),
    ("plain.ipynb", "no exercise of any chapter"),
])
def test_malformed_file_gets_a_message(graded, file, expected):
    rows = graded["by_file"][file]
    assert len(rows) == 1 and expected in rows[0]["message"] and rows[0]["points"] == "0", rows
    summary = graded["out"] / "feedback" / Path(file).stem / "summary.md"
    assert expected in summary.read_text()


def test_submissions_are_not_modified(graded):
    subs = {k: v for k, v in graded["before"].items() if "/submissions/" in k}
    assert subs and subs == {k: v for k, v in graded["after"].items() if "/submissions/" in k}


# ----------------------------------------------------------------------------------------------
# Hostile submissions (issue 18), graded in the same run as the honest ones
# ----------------------------------------------------------------------------------------------

def test_honest_submissions_come_out_as_if_graded_alone(graded):
    """solved and zed are the same notebook: one was graded beside the attacks, the other
    beside other submissions. Same points, no message, identical feedback."""
    out = graded["out"]
    for file in ["solved.ipynb", "zed/99_sample.ipynb"]:
        rows = graded["by_file"][file]
        assert _points(rows) == FULL and set(_messages(rows).values()) == {""}, rows
    html = [(out / "feedback" / s / "99_sample.html").read_bytes() for s in ["solved", "zed"]]
    assert html[0] == html[1]
    summaries = [(out / "feedback" / s / "summary.md").read_text().replace(f, "FILE").replace(s, "X")
                 for s, f in [("solved", "solved.ipynb"), ("zed", "zed/99_sample.ipynb")]]
    assert summaries[0] == summaries[1]


def test_reading_the_source_notebook_is_impossible(graded):
    rows = graded["by_file"]["mallory/99_sample.ipynb"]
    message = _messages(rows)["mean_of"]
    assert _points(rows)["mean_of"] == 0.0
    assert re.match(r"your solution cell failed: (FileNotFoundError|PermissionError)", message)
    assert "sandbox holds only the notebook's own folder" in message
    assert "LEAKED" not in _outputs(graded, "mallory")
    assert "statistics.pstdev(values)\\n    return [(v - m) / s" not in _outputs(graded, "mallory")


def test_reading_another_students_file_is_impossible(graded):
    rows = graded["by_file"]["mallory/99_sample.ipynb"]
    assert _points(rows)["variance"] == 0.0
    assert _messages(rows)["variance"].startswith("your solution cell failed: FileNotFoundError")
    assert HONEST_MARK not in _outputs(graded, "mallory")


def test_gradebook_and_grades_cannot_be_touched(graded):
    rows = graded["by_file"]["mallory/99_sample.ipynb"]
    assert _points(rows)["standardise"] == 0.0
    assert re.match(r"your solution cell failed: (FileNotFoundError|PermissionError|OSError)",
                    _messages(rows)["standardise"])
    out = graded["out"]
    assert (out / "previous.txt").exists() and not (out / "pwned.txt").exists()
    assert len(graded["rows"]) > 30 and "pwned" not in (out / "grades.csv").read_text()
    assert "TAMPERED" not in _outputs(graded, "mallory")


def test_no_network(graded):
    rows = graded["by_file"]["chuck.ipynb"]
    message = _messages(rows)["mean_of"]
    assert _points(rows)["mean_of"] == 0.0
    assert message.startswith("your solution cell failed: ConnectionRefusedError"), message
    assert "(blocked: graded without network access)" in message
    assert "CONNECTED" not in _outputs(graded, "chuck")
    assert not graded["reached"], "the submission reached a port on the grader's loopback"


def test_killing_the_grader_is_impossible(graded):
    """Its parent is the sandbox's own init (in a PID namespace of its own), which it may not
    signal; the grader and this test process live on (the run finished)."""
    rows = graded["by_file"]["chuck.ipynb"]
    assert _points(rows)["variance"] <= FULL["variance"]
    message = _messages(rows)["variance"]
    if _points(rows)["variance"] == 0.0:
        assert "can signal only its own processes" in message, message


def test_fork_bomb_is_stopped(graded):
    rows = graded["by_file"]["chuck.ipynb"]
    assert _points(rows)["standardise"] == 0.0
    message = _messages(rows)["standardise"]
    assert message.startswith("your solution cell failed: BlockingIOError: [Errno 11]"), message
    assert f"process limit ({PROCESSES} processes" in message
    assert _points(graded["by_file"]["solved.ipynb"]) == FULL  # graded beside it, as ever


def test_memory_hog_is_stopped_and_the_kernel_lives_on(graded):
    rows = graded["by_file"]["oscar.ipynb"]
    message = _messages(rows)["mean_of"]
    assert message.startswith("your solution cell failed: MemoryError"), message
    assert f"memory limit ({MEMORY_GIB:g} GiB)" in message
    assert _points(rows) == {"mean_of": 0.0, "variance": 0.0, "standardise": 5.0}


def test_nothing_outside_the_submissions_copy_changes(graded):
    assert graded["before"] == graded["after"]
    places = [graded["root"], REPO, REPO / "notebooks", REPO / "student", Path.home(), Path("/tmp"),
              Path(sysconfig.get_paths()["purelib"])]
    planted = [p for place in places for p in place.glob("*pwned*")]
    planted += list(graded["root"].rglob("*pwned*"))
    assert not planted, planted


def test_report_says_how_it_was_graded(graded):
    summary = (graded["out"] / "feedback" / "chuck" / "summary.md").read_text()
    assert "Graded in a sandbox (bubblewrap)" in summary and "no network" in summary
    assert f"at most {PROCESSES} processes" in summary


def test_missing_bubblewrap_fails_with_the_package_name(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SystemExit) as e:
        grading.grade(tmp_path, tmp_path / "out", source=FIXTURE.parent)
    assert "apt-get install bubblewrap" in str(e.value) and "--unsafe-no-sandbox" in str(e.value)


def test_unsafe_no_sandbox_grades_the_old_way_with_a_warning(graded):
    """Graded in the fixture, in the background while the submissions are written."""
    root = graded["root"]
    assert _points(_read_csv(root / "unsafe-out" / "grades.csv")) == FULL
    assert "WITHOUT a sandbox" in (root / "unsafe.log").read_text()  # the grader's stdout
    assert "WITHOUT a sandbox" in (root / "unsafe.err").read_text()  # and its stderr
    assert "WITHOUT a sandbox" in (root / "unsafe-out" / "feedback" / "solved" / "summary.md").read_text()


def test_gradebook_revision_is_the_newest_migration():
    """The grader reads nbgrader's migration head in its own process (common.alembic_head)
    instead of starting the `alembic` script: it must be the revision no migration builds on."""
    from nbgrader.dbutil import ALEMBIC_DIR

    texts = [p.read_text() for p in Path(ALEMBIC_DIR, "versions").glob("*.py")]
    revisions = {re.search(r"^revision = '(\w+)'", t, re.M).group(1) for t in texts}
    parents = {m for t in texts for m in re.findall(r"^down_revision = '(\w+)'", t, re.M)}
    assert len(revisions) > 1 and revisions - parents == {asg.common.alembic_head()}
