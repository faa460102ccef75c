"""Execute the book's notebooks and render the website into _build/html.

    python -m tools.build --schedule full   # `make book`: the schedule readers run
    python -m tools.build --schedule ci     # `make test`: the short schedule, before pytest

Each notebook is copied alone into an empty folder, _runs/<stem>/ (what a Colab reader
starts from), and executed there by nbmake. On the CI schedule nbmake applies the `mock` metadata
of the notebook's parameters cell; on the full schedule the mocks are dropped first. Jupyter Book
then renders the executed copies (never the clean files in notebooks/), so each notebook runs
once per build. Headline numbers that notebooks write (results/<stem>.json) are gathered into
_build/results/ and into the book's results page.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
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
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"  # vendored by `npm ci` (package.json)
RESULTS_MARKER = "<!-- results-table -->"  # where book/results.md receives the generated table

# Dive into Deep Learning's reported test accuracies on Fashion-MNIST, for comparison.
D2L_REFERENCE = {
    "05_softmax_regression": "about 0.83 (D2L 4.4)",
    "06_mlp": "about 0.85 (D2L 5.2)",
    "07_resnet": "about 0.90-0.91 (D2L 8.6, ResNet-18)",
}

SCHEDULES = {
    # cell timeout (s), notebooks run in parallel
    "full": {"timeout": 3600, "jobs": 1},  # one at a time, so measured wall times are honest
    "ci": {"timeout": 900, "jobs": 2},
}


def chapters():
    """Notebook paths listed in _toc.yml, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


def stage_runs(notebooks, schedule, run_dir=RUN_DIR):
    """Copy each notebook alone into its own empty folder; on the full schedule, drop the mocks."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # An empty pytest.ini makes this folder pytest's rootdir, away from the repository's test config.
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if schedule == "full":
            for cell in nb.cells:
                cell.metadata.pop("nbmake", None)
        folder = run_dir / path.stem
        shutil.rmtree(folder, ignore_errors=True)  # only this notebook's: others may be running
        folder.mkdir()
        nbformat.write(nb, folder / path.name)


def execute(schedule, jobs, run_dir=RUN_DIR, stems=None):
    """Run the staged notebooks (all, or those named) with nbmake; True when all passed."""
    settings = SCHEDULES[schedule]
    command = [
        sys.executable, "-m", "pytest", "--nbmake", "--overwrite", "-p", "no:cacheprovider",
        f"--nbmake-timeout={settings['timeout']}", "--durations=0", "-v",
        *([str(run_dir / stem) for stem in stems] if stems else [str(run_dir)]),
    ]
    if jobs > 1:
        command += ["-n", str(jobs)]
    env = dict(os.environ)
    # Share the cores between the notebooks that run side by side: oversubscribed OpenMP threads
    # spin against each other and made one training chapter several times slower.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    print("+", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", " ".join(command), flush=True)
    return subprocess.run(command, cwd=run_dir, env=env).returncode == 0


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


def results_table(summary):
    """The results page's table, one row per chapter and result, from the recorded numbers."""
    rows = [
        "| Chapter | What it trains | Metric | Value | Training time | Dive into Deep Learning | Schedule | Notebook run time | Machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        link = f"[{entry['title']}](../notebooks/{entry['chapter']}.ipynb)"
        run = f"{entry['notebook_seconds']:.0f} s" if entry["notebook_seconds"] is not None else "not run"
        where = f"{entry['machine']} ({entry['device']})"
        reference = D2L_REFERENCE.get(entry["chapter"], "")
        for r in entry["results"] or [None]:
            if r is None:
                cells = ["(nothing trained)", "", "", ""]
            else:
                value = r["value"]
                shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                seconds = r.get("seconds")
                cells = [r["trains"], r["metric"], shown, f"{seconds:.1f} s" if seconds is not None else ""]
            row = [link, *cells, reference, entry["schedule"], run, where]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(rows)


def stage_site(notebooks, summary):
    """The book's sources with executed notebooks, vendored MathJax and the generated results table."""
    shutil.rmtree(SITE_DIR, ignore_errors=True)
    SITE_DIR.mkdir(parents=True)
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy(ROOT / name, SITE_DIR / name)
    shutil.copytree(ROOT / "book", SITE_DIR / "book")
    (SITE_DIR / "notebooks").mkdir()
    for path in notebooks:
        shutil.copy(RUN_DIR / path.stem / path.name, SITE_DIR / "notebooks" / path.name)
    if not MATHJAX.is_dir():
        sys.exit(f"{MATHJAX} is missing: run `npm ci` (make venv does) to vendor MathJax.")
    shutil.copytree(MATHJAX, SITE_DIR / "book" / "_static" / "mathjax")
    results_page = SITE_DIR / "book" / "results.md"
    if results_page.exists():
        text = results_page.read_text()
        if RESULTS_MARKER not in text:
            sys.exit(f"book/results.md lacks the marker {RESULTS_MARKER}")
        results_page.write_text(text.replace(RESULTS_MARKER, results_table(summary)))


def render():
    """Jupyter Book into _build/html; any Sphinx warning fails the build."""
    command = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(SITE_DIR),
        "--path-output", str(ROOT), "--all", "-W", "-n", "--keep-going",
    ]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), required=True)
    parser.add_argument("--jobs", type=int, help="notebooks run in parallel (default: 1 full, 2 ci)")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="run only these notebooks, render nothing")
    args = parser.parse_args(argv)

    notebooks = chapters()
    if args.only:
        notebooks = [p for p in notebooks if p.stem in args.only]
    stage_runs(notebooks, args.schedule)
    executed = execute(args.schedule, args.jobs or SCHEDULES[args.schedule]["jobs"],
                       stems=[p.stem for p in notebooks])
    summary = collect_results(notebooks, args.schedule)
    if args.only:
        return 0 if executed else 1
    stage_site(notebooks, summary)
    rendered = render()
    if not executed:
        print("Some notebooks failed (see above); the site was rendered for inspection.", file=sys.stderr)
    return 0 if executed and rendered else 1


if __name__ == "__main__":
    sys.exit(main())
