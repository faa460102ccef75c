"""Execute the book's notebooks and render the website into _build/html.

    python -m tools.build --schedule full   # `make book`: the schedule readers run
    python -m tools.build --schedule ci     # `make test`: the short schedule, before pytest

Each notebook is copied alone into an empty folder, _runs/<stem>/ (what a Colab reader
starts from), and executed there by nbmake. On the CI schedule nbmake applies the `mock` metadata
of the notebook's parameters cell; on the full schedule the mocks are dropped first. After the
chapter, the same kernel runs the exercises as students receive them (student/<stem>.ipynb,
solutions stubbed) with the instructor's test cells: every test cell must then fail with
NotImplementedError and nothing else (tests/test_exercises.py reads the outcome), so the
chapter runs once per build, never a second time for its student version.

A run that passed is cached in _build/cache/, keyed on the staged notebook (its code, its
schedule, its student cells) and the pinned requirements: a chapter that did not change is not
executed again. Jupyter Book then renders the executed copies (never the clean files in
notebooks/), incrementally: only pages whose sources changed are rebuilt. Headline numbers that
notebooks write (results/<stem>.json) are gathered into _build/results/, the results page's
table and its figure.
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
# One empty folder per notebook. Not under _build/: nbmake refuses to collect notebooks there.
RUN_DIR = ROOT / "_runs"
SITE_DIR = BUILD / "site"  # the book's sources, with executed notebooks, as Jupyter Book reads them
RESULTS_DIR = BUILD / "results"  # one JSON file per executed notebook
CACHE_DIR = BUILD / "cache"  # executed notebooks of passed runs, by content key
STUDENT_DIR = ROOT / "student"  # the committed student versions (python -m tools.assignments release)
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"  # vendored by `npm ci` (package.json)
RESULTS_MARKER = "<!-- results-table -->"  # where book/results.md receives the generated table
FIGURE_MARKER = "<!-- results-figure -->"  # ... and the figure drawn from the same numbers
FIGURE_NAME = "results_accuracy_time.png"
# What else decides a run's outcome besides the notebook itself: the pinned environment.
ENVIRONMENT_FILES = ["requirements.txt", "requirements-nodeps.txt"]
STUDENT_CHECK_TAG = "student-check"  # cells appended to the run; the website never shows them

SCHEDULES = {
    # cell timeout (s), notebooks run in parallel
    "full": {"timeout": 3600, "jobs": 1},  # one at a time, so measured wall times are honest
    "ci": {"timeout": 900, "jobs": 2},
}
# CI's budget for one chapter on its CI schedule, two notebooks side by side on two cores
# (CONTRIBUTING.md; tests/test_budget.py).
CI_SECONDS_PER_CHAPTER = 90


def chapters():
    """Notebook paths listed in _toc.yml, in reading order: the one list of chapters."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


def threads_per_notebook(jobs):
    """OpenMP threads for each of `jobs` kernels side by side: the cores shared out. More
    threads than cores spin against each other (it made one chapter several times slower)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


# ----------------------------------------------------------------------------------------------
# The student check: the exercises as students get them, run after the chapter
# ----------------------------------------------------------------------------------------------

def nbgrader_meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def student_check_cells(path):
    """The code cells of the student version's exercise section, with each test cell replaced
    by the instructor's (hidden tests included, as the autograder runs it). Test cells are
    tagged `raises-exception` so the run goes on; tests/test_exercises.py checks what they
    raised. Empty when the chapter has no student version yet."""
    student_path = STUDENT_DIR / path.name
    if not student_path.exists():
        return []
    student = nbformat.read(student_path, as_version=4)
    instructor_tests = {nbgrader_meta(c)["grade_id"]: c for c in nbformat.read(path, as_version=4).cells
                        if nbgrader_meta(c).get("grade") and not nbgrader_meta(c).get("solution")}
    starts = [i for i, c in enumerate(student.cells)
              if c.cell_type == "markdown" and "## Exercises" in c.source.splitlines()]
    cells = []
    for cell in student.cells[starts[0] if starts else len(student.cells):]:
        if cell.cell_type != "code":
            continue
        grade_id = nbgrader_meta(cell).get("grade_id")
        test = instructor_tests.get(grade_id)
        tags = [STUDENT_CHECK_TAG] + (["raises-exception"] if test is not None else [])
        new = nbformat.v4.new_code_cell((test or cell).source)
        # A fixed id, not nbformat's random one: the staged notebook keys the build cache.
        new.id = f"{STUDENT_CHECK_TAG}-{len(cells)}"
        new.metadata = {"tags": tags, "nbgrader": copy.deepcopy(nbgrader_meta(test or cell))}
        cells.append(new)
    return cells


def is_student_check(cell):
    return STUDENT_CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def student_check_problems(executed):
    """What went wrong in the student check of an executed notebook (empty: nothing). Each
    graded test cell must fail with NotImplementedError and nothing else; every other cell of
    the student's exercise section must run without error."""
    cells = [c for c in executed.cells if is_student_check(c)]
    if not cells:
        return ["no student check ran: is student/<chapter>.ipynb missing?"]
    problems = []
    for cell in cells:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        meta = nbgrader_meta(cell)
        name = meta.get("grade_id") or (cell.source.splitlines() or ["(empty cell)"])[0][:40]
        raised = ", ".join(f"{o.get('ename')}: {str(o.get('evalue'))[:120]}" for o in errors)
        if meta.get("grade") and not meta.get("solution"):
            if [o.get("ename") for o in errors] != ["NotImplementedError"]:
                problems.append(f"{name}: on the student's stub the test cell must fail with "
                                f"NotImplementedError alone, got: {raised or 'no error'}")
        elif errors:
            problems.append(f"{name}: a cell of the student version fails: {raised}")
    return problems


# ----------------------------------------------------------------------------------------------
# Executing the notebooks
# ----------------------------------------------------------------------------------------------

def stage_runs(notebooks, schedule, run_dir=RUN_DIR, student_check=True):
    """Copy each notebook alone into its own empty folder; on the full schedule, drop the mocks.
    Appends the student check (see student_check_cells) unless told not to."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # An empty pytest.ini makes this folder pytest's rootdir, away from the repository's test config.
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if schedule == "full":
            for cell in nb.cells:
                cell.metadata.pop("nbmake", None)
        if student_check:
            nb.cells.extend(student_check_cells(path))
        folder = run_dir / path.stem
        shutil.rmtree(folder, ignore_errors=True)  # only this notebook's: others may be running
        folder.mkdir()
        nbformat.write(nb, folder / path.name)


def execute(schedule, jobs, run_dir=RUN_DIR, stems=None):
    """Run the staged notebooks (all, or those named) with nbmake; returns the stems that
    passed."""
    settings = SCHEDULES[schedule]
    if stems is None:
        stems = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    # One report per build process: several builds of single chapters may share run_dir.
    report = run_dir / f"nbmake-report-{os.getpid()}.xml"
    command = [
        sys.executable, "-m", "pytest", "--nbmake", "--overwrite", "-p", "no:cacheprovider",
        f"--nbmake-timeout={settings['timeout']}", "--durations=0", "-v",
        f"--junitxml={report}", *[str(run_dir / stem) for stem in stems],
    ]
    if jobs > 1 and len(stems) > 1:
        command += ["-n", str(min(jobs, len(stems)))]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_notebook(jobs)))
    print("+", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", " ".join(command), flush=True)
    subprocess.run(command, cwd=run_dir, env=env)
    passed = set()
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            if not any(child.tag in ("failure", "error", "skipped") for child in case):
                passed |= {s for s in stems if f"{s}.ipynb" in case.get("name", "")
                           or s in case.get("classname", "").split(".")}
        report.unlink()
    return passed


def cache_key(staged, schedule):
    digest = hashlib.sha256(schedule.encode())
    for data in [staged.read_bytes(), *[(ROOT / f).read_bytes() for f in ENVIRONMENT_FILES]]:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:20]


def cached_run(stem, key):
    return CACHE_DIR / f"{stem}-{key}"


def restore_from_cache(stem, key, run_dir=RUN_DIR):
    """Put a cached run back into run_dir/<stem>/; False when there is none."""
    cached = cached_run(stem, key)
    if not cached.is_dir():
        return False
    folder = run_dir / stem
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(cached, folder)
    return True


def store_in_cache(stem, key, run_dir=RUN_DIR):
    """Keep a passed run (its executed notebook and recorded results; not its data)."""
    for old in CACHE_DIR.glob(f"{stem}-*"):
        shutil.rmtree(old, ignore_errors=True)
    target = cached_run(stem, key)
    target.mkdir(parents=True)
    shutil.copy(run_dir / stem / f"{stem}.ipynb", target)
    if (run_dir / stem / "results").is_dir():
        shutil.copytree(run_dir / stem / "results", target / "results")


def run_notebooks(notebooks, schedule, jobs, use_cache=True):
    """Stage, execute what the cache lacks, cache what passed; returns the stems that failed."""
    stage_runs(notebooks, schedule)
    keys = {p.stem: cache_key(RUN_DIR / p.stem / p.name, schedule) for p in notebooks}
    todo = [p.stem for p in notebooks if not (use_cache and restore_from_cache(p.stem, keys[p.stem]))]
    for stem in sorted(set(keys) - set(todo)):
        print(f"cached: {stem} (unchanged since it last passed)", flush=True)
    passed = execute(schedule, jobs, stems=todo) if todo else set()
    for stem in todo:
        if stem in passed:
            store_in_cache(stem, keys[stem])
    return sorted(set(todo) - passed)


# ----------------------------------------------------------------------------------------------
# Results: gathered from the runs, shown as a table and a figure
# ----------------------------------------------------------------------------------------------

def machine():
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores"


def notebook_seconds(nb):
    """Wall time of a run, from the execution timestamps nbmake records in each cell."""
    stamps = [c.metadata.get("execution", {}) for c in nb.cells if c.cell_type == "code"]
    starts = [s["iopub.execute_input"] for s in stamps if "iopub.execute_input" in s]
    ends = [s["shell.execute_reply"] for s in stamps if "shell.execute_reply" in s]
    if not starts or not ends:
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return round((parse(max(ends)) - parse(min(starts))).total_seconds(), 1)


def collect_results(notebooks, schedule):
    """One JSON per notebook: its run time, the machine, and what the notebook itself recorded."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary = []
    for path in notebooks:
        folder = RUN_DIR / path.stem
        nb = nbformat.read(folder / path.name, as_version=4)
        recorded_file = folder / "results" / f"{path.stem}.json"
        recorded = json.loads(recorded_file.read_text()) if recorded_file.exists() else {}
        entry = {
            "chapter": path.stem,
            "title": nb.cells[0].source.splitlines()[0].lstrip("# ").strip(),
            "schedule": recorded.get("schedule", schedule),
            "device": recorded.get("device", "cpu"),
            "machine": machine(),
            "notebook_seconds": notebook_seconds(nb),
            "results": recorded.get("results", []),
        }
        (RESULTS_DIR / f"{path.stem}.json").write_text(json.dumps(entry, indent=2) + "\n")
        summary.append(entry)
    return summary


def shown(value):
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def duration(seconds):
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def model_label(result):
    """What a results row trained, with its training compute when the chapter counted it."""
    if result.get("train_macs"):
        return f"{result['trains']} ({result['train_macs']:.2g} multiply-adds)"
    return result["trains"]


def results_table(summary):
    """The results page's table: one row per trained model, from the recorded numbers."""
    rows = [
        "| Chapter | Model | Metric | Book | Training time | d2l | d2l time |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        link = f"[{entry['chapter'][:2]}](../notebooks/{entry['chapter']}.ipynb)"
        for r in entry["results"]:
            d2l = r.get("d2l") or {}
            row = [link, model_label(r), r["metric"], shown(r["value"]), duration(r.get("seconds")),
                   shown(d2l["value"]) if d2l else "", duration(d2l.get("seconds"))]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(rows)


def run_times_table(summary):
    """How long each notebook ran, on which schedule and machine."""
    rows = ["| Chapter | Title | Schedule | Notebook run time | Device |", "|---|---|---|---|---|"]
    for entry in summary:
        link = f"[{entry['chapter'][:2]}](../notebooks/{entry['chapter']}.ipynb)"
        rows.append(f"| {link} | {entry['title']} | {entry['schedule']} | "
                    f"{duration(entry['notebook_seconds']) or 'not run'} | {entry['device']} |")
    return "\n".join(rows)


def accuracy_points(summary):
    """(label, seconds, accuracy, source) for every measured accuracy, book and d2l."""
    points = []
    for entry in summary:
        for r in entry["results"]:
            if "accuracy" not in r["metric"] or not r.get("seconds"):
                continue
            label = f"{entry['chapter'][:2]} {r['trains']}"
            points.append((label, r["seconds"], r["value"], "this book"))
            d2l = r.get("d2l") or {}
            if d2l.get("seconds"):
                points.append((label, d2l["seconds"], d2l["value"], "d2l"))
    return points


def draw_results_figure(summary, target):
    """Test accuracy against training time, book and d2l, from the same numbers as the table:
    one colour per model, a circle for the book's code and a square for d2l's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points = accuracy_points(summary)
    labels = list(dict.fromkeys(p[0] for p in points))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, label in enumerate(labels):
        mine = sorted((p for p in points if p[0] == label), key=lambda p: p[3])
        colour = colours(i % 10)
        ax.plot([p[1] for p in mine], [p[2] for p in mine], color=colour, lw=0.8, alpha=0.6)
        for _, seconds, accuracy, source in mine:
            ax.scatter(seconds, accuracy, color=colour, s=55, zorder=3,
                       marker="s" if source == "d2l" else "o")
    handles = [Line2D([], [], color=colours(i % 10), marker="o", ls="", label=label[:60])
               for i, label in enumerate(labels)]
    handles += [Line2D([], [], color="grey", marker=m, ls="", label=f"marker: {source}")
                for m, source in [("o", "this book's code"), ("s", "d2l's code")]]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
              frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("training wall time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy against training time, as measured in this build")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=110, metadata={"Software": None})
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The website
# ----------------------------------------------------------------------------------------------

def write_if_changed(target, data):
    """Sphinx rebuilds what is newer than its last build: leave unchanged files untouched."""
    data = data.encode() if isinstance(data, str) else data
    if target.exists() and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def site_notebook(executed):
    """An executed notebook as the website shows it: without the student check."""
    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if not is_student_check(c)]
    return nbformat.writes(nb)


def stage_site(notebooks, summary):
    """The book's sources, executed notebooks, vendored MathJax and the generated results."""
    wanted = {}
    for name in ["_config.yml", "_toc.yml"]:
        wanted[name] = (ROOT / name).read_bytes()
    for path in (ROOT / "book").rglob("*"):
        if path.is_file():
            wanted[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    for path in notebooks:
        wanted[f"notebooks/{path.name}"] = site_notebook(RUN_DIR / path.stem / path.name)
    if not MATHJAX.is_dir():
        sys.exit(f"{MATHJAX} is missing: run `npm ci` (make venv does) to vendor MathJax.")
    for path in MATHJAX.rglob("*"):
        if path.is_file():
            wanted[f"book/_static/mathjax/{path.relative_to(MATHJAX).as_posix()}"] = path.read_bytes()
    results_page = "book/results.md"
    if results_page in wanted:
        text = wanted[results_page].decode()
        for marker in [RESULTS_MARKER, FIGURE_MARKER]:
            if marker not in text:
                sys.exit(f"book/results.md lacks the marker {marker}")
        figure = BUILD / FIGURE_NAME
        draw_results_figure(summary, figure)
        wanted[f"book/{FIGURE_NAME}"] = figure.read_bytes()
        text = text.replace(RESULTS_MARKER, results_table(summary) + "\n\n" + run_times_table(summary))
        alt = "Test accuracy against training time for every trained model, book and d2l"
        wanted[results_page] = text.replace(FIGURE_MARKER, f"![{alt}]({FIGURE_NAME})")
    for existing in [p for p in SITE_DIR.rglob("*") if p.is_file()] if SITE_DIR.exists() else []:
        if existing.relative_to(SITE_DIR).as_posix() not in wanted:
            existing.unlink()
    for name, data in wanted.items():
        write_if_changed(SITE_DIR / name, data)


def render():
    """Jupyter Book into _build/html, rebuilding only changed pages; any warning fails it."""
    command = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(SITE_DIR),
        "--path-output", str(ROOT), "-W", "-n", "--keep-going",
    ]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), required=True)
    parser.add_argument("--jobs", type=int, help="notebooks run in parallel (default: 1 full, 2 ci)")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="run only these notebooks, render nothing")
    parser.add_argument("--no-cache", action="store_true", help="execute even unchanged notebooks")
    args = parser.parse_args(argv)

    notebooks = chapters()
    if args.only:
        notebooks = [p for p in notebooks if p.stem in args.only]
    jobs = args.jobs or SCHEDULES[args.schedule]["jobs"]
    failed = run_notebooks(notebooks, args.schedule, jobs, use_cache=not args.no_cache)
    summary = collect_results(notebooks, args.schedule)
    if failed:
        print(f"Notebooks that failed: {', '.join(failed)} (see above).", file=sys.stderr)
    if args.only:
        return 1 if failed else 0
    stage_site(notebooks, summary)
    rendered = render()
    if failed:
        print("The site was rendered for inspection despite the failures.", file=sys.stderr)
    return 0 if rendered and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
