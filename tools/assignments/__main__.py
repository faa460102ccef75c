"""The command line: ``python -m tools.assignments release|grade|list`` (see __init__.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from . import __doc__ as DOC
from .common import CHAPTERS, STUDENT, NbgraderFailed, chapter_notebooks, exercises, fmt


def _chapters_arg(value: str | None) -> list[str] | None:
    return [c.strip().removesuffix(".ipynb") for c in value.split(",") if c.strip()] if value else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.assignments", description=DOC.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("release", help="generate the student notebooks (nbgrader generate_assignment)")
    r.add_argument("--chapters", help="comma-separated chapter stems (default: all)")
    r.add_argument("--source", type=Path, default=CHAPTERS, help="chapter notebooks (default: notebooks/)")
    r.add_argument("--out", type=Path, default=STUDENT, help="output folder (default: student/)")
    r.add_argument("--check", action="store_true", help="write nothing; exit 1 if out of date")

    g = sub.add_parser("grade", help="autograde a folder of submitted notebooks, each in a sandbox")
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
    g.add_argument("--memory-limit", type=float, default=8.0,
                   help="GiB of address space per process of a submission (default 8)")
    g.add_argument("--max-processes", type=int, default=256,
                   help="processes and threads per submission (default 256)")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run the submissions' code with your own rights, without bubblewrap "
                        "(only for code you trust; the report says so)")

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
            print(f"{stem:28} {len(exs)} exercises, {fmt(total):>3} points: "
                  + ", ".join(f"{e['id']} ({fmt(e['points'])})" for e in exs))
        return 0
    if a.command == "release":
        from .release import release

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
        from .grade import UNSAFE_WARNING, first_messages, grade, totals
        from .sandbox import Limits

        if a.unsafe_no_sandbox:
            print(UNSAFE_WARNING, file=sys.stderr)
        rows = grade(a.submissions, a.out, a.source, _chapters_arg(a.chapters), a.cell_timeout,
                     a.time_limit, a.jobs, a.schedule,
                     Limits(memory_gib=a.memory_limit, processes=a.max_processes),
                     a.unsafe_no_sandbox)
        for (student, chapter, file), (pts, mx) in sorted(totals(rows).items()):
            msgs = first_messages([r for r in rows if r["file"] == file])
            print(f"{student:20} {chapter or '-':24} {fmt(pts):>6} / {fmt(mx):<6} {file}"
                  + (f"  [{'; '.join(msgs)[:160]}]" if msgs else ""))
        if a.unsafe_no_sandbox:
            print(UNSAFE_WARNING)
        print(f"wrote {a.out / 'grades.csv'} and {a.out / 'feedback'}/")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
