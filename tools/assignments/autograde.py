"""One submission, in its own process: ``python -m tools.assignments.autograde WORK``.

``grade`` starts this with ``subprocess`` for every submission (``--jobs`` at a time), in a new
session, and kills it at the time limit; its kernel (in the sandbox) dies with it. ``WORK`` holds
a throw-away nbgrader course (source, release, gradebook), the submission in
``submitted/student/<chapter>/`` and ``task.json``; this writes ``result.json`` (the scores, read
from nbgrader's gradebook and autograded notebook, both outside the sandbox) and nbgrader's
feedback. The kernel runs in the sandbox (tools/assignments/sandbox.py) on ``WORK/box``, a copy
of the submitted notebook; nothing it writes there is read back.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute

from . import sandbox
from .common import (COURSE_ID, STUDENT_ID, config, exercises, is_graded, nbgrader_meta,
                     nbgrader_environment, run_converter)


class RobustExecute(Execute):
    """nbgrader's Execute, with the kernel in the sandbox, and surviving a dead kernel.

    A kernel that dies (segfault, os._exit, out of memory) or stops responding (a cell that
    times out and ignores the interrupt) fails the cell it was running and every later code
    cell, instead of aborting the whole submission: exercises that passed before keep their
    points."""

    def __init__(self, *args, **kwargs):
        kwargs["kernel_manager_class"] = sandbox.SandboxKernelManager
        super().__init__(*args, **kwargs)

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


def _config(work: Path, chapter: str, task: dict):
    c = config(work, chapter, STUDENT_ID)
    # Autograde: re-add deleted test cells (with their hidden tests) from the gradebook.
    c.OverwriteCells.add_missing_cells = True
    c.Execute.timeout = task["cell_timeout"]
    c.Execute.interrupt_on_timeout = True
    c.Autograde.autograde_preprocessors = [  # nbgrader's list, with the Execute above
        f"{__name__}.RobustExecute",
        "nbgrader.preprocessors.IgnorePattern",
        "nbconvert.preprocessors.ClearMetadataPreprocessor",
        "nbgrader.preprocessors.LimitOutput",
        "nbgrader.preprocessors.SaveAutoGrades",
        "nbgrader.preprocessors.AssignLatePenalties",
        "nbgrader.preprocessors.CheckCellMetadata",
    ]
    k = c.SandboxKernelManager
    k.sandbox_work = str(work / "box")
    k.sandbox_sockets = str(work / "sockets")
    k.sandbox_limits = task["limits"]
    k.sandbox_disabled = not task["sandbox"]
    uid = sandbox.sandbox_uid() if task["sandbox"] else None
    k.sandbox_uid = "" if uid is None else str(uid)
    return c, uid


def error_text(cell, cell_timeout: int) -> str:
    """The error a cell's outputs show, in one line ('' if none)."""
    enames = [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if "CellTimeoutError" in enames:
        return f"timed out: the cell ran longer than {cell_timeout} s"
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error" and out.get("ename") == "NotRun":
            return str(out.get("evalue", ""))
        if out.get("output_type") == "error":
            ename, evalue = out.get("ename", "Error"), str(out.get("evalue", "")).strip()
            # SyntaxError and friends name IPython's temporary file: keep the line number only
            evalue = re.sub(r"\((?:<[^>]*>|[^(),]*\.py), line (\d+)\)", r"(line \1)", evalue)
            text = f"{ename}: {evalue}" if evalue else ename
            text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\n", " ")
            return text[:200]
    return ""


def autograde(work: Path) -> dict:
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateFeedback

    task = json.loads((work / "task.json").read_text())
    chapter = task["chapter"]
    c, uid = _config(work, chapter, task)
    submitted = work / "submitted" / STUDENT_ID / chapter / f"{chapter}.ipynb"
    box = work / "box"  # the sandbox's only writable folder: a copy of the submission
    box.mkdir()
    shutil.copyfile(submitted, box / f"{chapter}.ipynb")
    if task["sandbox"]:
        sandbox.prepare_dirs(box, work / "sockets", uid)
    else:
        (work / "sockets").mkdir()
    result = {"ok": False}
    try:
        run_converter(Autograde, work, chapter, STUDENT_ID, c=c)
    except Exception as e:
        result["error"] = f"grading failed: {e}"
    graded = work / "autograded" / STUDENT_ID / chapter / f"{chapter}.ipynb"
    if not graded.exists():
        return result
    nb = nbformat.read(graded, as_version=4)
    timeout = task["cell_timeout"]
    errors = {nbgrader_meta(c).get("grade_id"): error_text(c, timeout) for c in nb.cells
              if is_graded(c) or nbgrader_meta(c).get("solution")}
    # A solution cell that did not run (the kernel had died or hung before it) is not the
    # student's error in that cell: the test cell's message says what happened.
    solution_errors = {gid: text for gid, text in errors.items()
                       if text and not text.startswith("not run:")}
    with Gradebook(f"sqlite:///{work / 'gradebook.db'}", COURSE_ID) as gb:
        sub = gb.find_submission_notebook(chapter, chapter, STUDENT_ID)
        scores = {g.name: (g.auto_score, g.max_score) for g in sub.grades}
    release = nbformat.read(work / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    result["grades"] = []
    for e in exercises(release):
        gid = e["grade_id"]
        if gid in scores:
            result["grades"].append({
                "grade_id": gid, "points": scores[gid][0], "max_points": scores[gid][1],
                "message": errors.get(gid, ""),
                "solution_error": solution_errors.get(f"{e['id']}_solution", "")})
    result["ok"] = True
    try:
        run_converter(GenerateFeedback, work, chapter, STUDENT_ID)
    except Exception as e:  # feedback is a courtesy: the grades stand without it
        result["feedback_error"] = f"{type(e).__name__}: {e}"
    return result


def main(argv: list[str]) -> int:
    work = Path(argv[1])
    nbgrader_environment()
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s %(name)s] %(message)s")
    result = autograde(work)
    (work / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
