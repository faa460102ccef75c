"""The notebook conventions of CONTRIBUTING.md as checks. Each check takes a notebook (and its
path) and returns a list of problems, empty when the notebook follows the convention, so that the
same function is tested on the real chapters and on deliberately broken copies."""

import ast
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tools" / "snippets"  # cells several chapters paste verbatim
DATA_SNIPPET = SNIPPETS / "fashion_mnist.py"

# Top-level modules a notebook may import besides the standard library: requirements.txt and what
# those packages bring (PIL with torchvision, IPython with ipykernel).
INSTALLED = {
    "torch", "torchvision", "numpy", "pandas", "matplotlib", "PIL", "IPython", "skimage",
    "torchinfo", "torchmetrics", "timm", "d2l", "tensorboard", "captum",
    "open_clip", "pycocotools", "scipy",
}
# Of those, what a fresh Colab runtime lacks: the setup cell must install these when used.
COLAB_LACKS = {
    "torchinfo": "torchinfo", "torchmetrics": "torchmetrics", "d2l": "d2l", "captum": "captum",
    "open_clip": "open-clip-torch",
}
NEVER_INSTALL = {"torch", "numpy", "torchvision"}  # Colab's own builds match its CUDA


def repository():
    """(owner/name, branch) from _config.yml: the one place that names the repository."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    return url.split("github.com/")[1], config["repository"]["branch"]


def colab_url(relative_path):
    repo, branch = repository()
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{relative_path}"


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def python_source(cell):
    """A code cell's source as Python: IPython magics and shell escapes become `pass`."""
    lines = []
    for line in cell.source.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        lines.append(indent + "pass" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def check_no_outputs(nb, path=None):
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"cell {i} carries outputs or an execution count: clear them before committing")
    return problems


def check_title_and_badge(nb, path):
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        return ["the first cell must be a Markdown title cell"]
    first = nb.cells[0].source
    problems = []
    if not re.match(r"# \S", first):
        problems.append("the first cell must start with a '# Title' heading")
    expected = colab_url(Path(path).relative_to(ROOT).as_posix() if Path(path).is_relative_to(ROOT) else f"notebooks/{Path(path).name}")
    badges = re.findall(r"\(https://colab\.research\.google\.com/github/[^)\s]+\)", first)
    if f"({expected})" not in badges:
        problems.append(f"the first cell lacks the Colab badge linking to {expected}")
    if len(first.split("\n\n")) < 3:
        problems.append("the first cell needs a title, a summary paragraph and the badge")
    return problems


def check_setup_cell(nb, path=None):
    cells = code_cells(nb)
    if not cells:
        return ["no code cells"]
    source = cells[0].source
    problems = []
    if "pip install" in source and '"google.colab" in sys.modules' not in source:
        problems.append('the setup cell installs packages outside an `if "google.colab" in sys.modules:` guard')
    for needed, why in [
        ("torch.manual_seed(", "seed the random number generators"),
        ("torch.cuda.is_available()", "choose cuda when present"),
        ("device =", "define `device`"),
    ]:
        if needed not in source:
            problems.append(f"the setup cell (first code cell) must {why}: `{needed}` not found")
    for line in source.splitlines():
        if "pip install" not in line:
            continue
        if not line.startswith((" ", "\t")):
            problems.append(f"pip install outside the Colab guard: {line.strip()}")
        packages = [w for w in line.split("pip install", 1)[1].split() if not w.startswith("-")]
        for package in packages:
            name = re.split(r"[=<>\[]", package)[0].lower()
            if name in NEVER_INSTALL:
                problems.append(f"the setup cell must not install {name} (Colab's own build matches its GPU)")
            if name == "d2l" and "--no-deps" not in line:
                problems.append("d2l must be installed with --no-deps")
    for i, cell in enumerate(cells[1:], start=1):
        if "pip install" in cell.source:
            problems.append(f"code cell {i} installs packages: only the setup cell may")
    return problems


def imported_modules(nb):
    modules = set()
    for cell in code_cells(nb):
        try:
            tree = ast.parse(python_source(cell))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def check_imports(nb, path=None):
    problems = []
    modules = imported_modules(nb)
    for module in sorted(modules):
        if module not in INSTALLED and module not in sys.stdlib_module_names:
            problems.append(f"imports {module}, which is neither installed by requirements.txt nor in the standard library")
    setup = code_cells(nb)[0].source if code_cells(nb) else ""
    for module, package in COLAB_LACKS.items():
        if module in modules and not re.search(rf"pip install[^\n]*\b{package}\b", setup):
            problems.append(f"imports {module}, which Colab lacks: the setup cell must install {package}")
    return problems


def check_standalone_sources(nb, path=None):
    """Static half of 'standalone': nothing refers to files of this repository or of the machine."""
    problems = []
    for i, cell in enumerate(nb.cells):
        for pattern in ["../shared", "/work/", "../notebooks", "../book", "../tools"]:
            if pattern in cell.source:
                problems.append(f"cell {i} refers to {pattern!r}: a notebook must run from an empty folder")
    return problems


def check_parameters_cell(nb, path=None):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        return [f"expected exactly one cell tagged 'parameters', found {len(cells)}"]
    cell = cells[0]
    problems = []
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as error:
        return [f"the parameters cell is not valid Python: {error}"]
    assigned = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            for target in node.targets:
                assigned[target.id] = node.value
        else:
            problems.append(f"the parameters cell may only assign constants (line {node.lineno})")
    schedule = assigned.get("SCHEDULE")
    if not (isinstance(schedule, ast.Constant) and schedule.value == "full"):
        problems.append('the parameters cell must set SCHEDULE = "full"')
    mock = cell.metadata.get("nbmake", {}).get("mock", {})
    if mock.get("SCHEDULE") != "ci":
        problems.append('the parameters cell needs nbmake mock metadata with "SCHEDULE": "ci"')
    for name in mock:
        if name not in assigned:
            problems.append(f"the mock sets {name}, which the parameters cell does not assign")
    others = [c for c in nb.cells if c is not cell and c.metadata.get("nbmake", {}).get("mock")]
    if others:
        problems.append("only the parameters cell may carry nbmake mock metadata")
    return problems


MYST_SYNTAX = re.compile(r"^(```|:::)\{[a-z-]+\}|\{[a-z-]+\}`", re.MULTILINE)


def check_plain_markdown(nb, path=None):
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and MYST_SYNTAX.search(cell.source):
            problems.append(f"cell {i} uses MyST syntax, which Colab shows raw: use plain Markdown and cell tags")
        # A control character in Markdown is a LaTeX command eaten by a Python string escape
        # (\text -> tab + "ext", \beta -> backspace + "eta", \approx -> bell + "pprox",
        # \rho -> carriage return + "ho"), which renders wrongly.
        if cell.cell_type == "markdown" and re.search(r"[\t\b\f\a\v\r]", cell.source):
            problems.append(f"cell {i} holds a control character (tab, backspace, bell, ...): "
                            "a LaTeX command lost to a string escape?")
        # Markdown reads a line of display math that opens with "+ ", "- ", "* " or "> " as a
        # list item or a quote, and the website then shows the whole formula as raw TeX.
        for math in re.findall(r"\$\$(.*?)\$\$", cell.source, re.DOTALL) if cell.cell_type == "markdown" else []:
            if re.search(r"^[ \t]*[-+*>][ \t]", math, re.MULTILINE):
                problems.append(f"cell {i}: a line of $$ math opens with +, -, * or >, which "
                                "Markdown reads as a list or quote: move the sign up a line")
    return problems


def snippet_names(snippet):
    """The public functions and classes a snippet defines."""
    tree = ast.parse(snippet.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
            and not n.name.startswith("_")}


def check_snippets(nb, path=None):
    """Code shared between chapters (tools/snippets/*.py) is pasted verbatim: a cell that
    starts like a snippet equals it, and a notebook that uses a snippet's functions or
    classes without defining them itself holds the snippet."""
    problems = []
    cells = [c.source.strip() for c in code_cells(nb)]
    for snippet in sorted(SNIPPETS.glob("*.py")):
        text = snippet.read_text().strip()
        name = snippet.relative_to(ROOT)
        if any(c.startswith(text.splitlines()[0]) and c != text for c in cells):
            problems.append(f"a cell starts like {name} but differs from it: paste it verbatim")
        if text in cells:
            continue
        for used in sorted(snippet_names(snippet)):
            calls = re.compile(rf"(?<![\w.]){used}\(")
            defines = re.compile(rf"^(def|class) {used}\b", re.MULTILINE)
            if any(calls.search(c) for c in cells) and not any(defines.search(c) for c in cells):
                problems.append(f"uses {used}() but no cell is identical to {name}")
                break
    return problems


CODE_WIDTH = 88  # characters the website's code blocks show without scrolling sideways


def check_code_width(nb, path=None):
    problems = []
    for i, cell in enumerate(code_cells(nb)):
        wide = [line for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
        if wide:
            problems.append(f"code cell {i} has {len(wide)} line(s) over {CODE_WIDTH} "
                            f"characters (it scrolls sideways on the website): {wide[0][:60]}...")
    return problems


def nbgrader(cell):
    return cell.metadata.get("nbgrader", {})


def check_exercises(nb, path=None):
    problems = []
    headings = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and re.search(r"^## Exercises\s*$", c.source, re.MULTILINE)]
    if len(headings) != 1:
        return ["expected one '## Exercises' heading"]
    start = headings[0]
    graded = [i for i, c in enumerate(nb.cells) if nbgrader(c)]
    if any(i < start for i in graded):
        problems.append("nbgrader cells must all come after the Exercises heading")
    solutions = [i for i in graded if nbgrader(nb.cells[i]).get("solution")]
    tests = [i for i in graded if nbgrader(nb.cells[i]).get("grade")]
    if len(tests) < 3:
        problems.append(f"at least three autograded exercises are required, found {len(tests)}")
    ids = [nbgrader(nb.cells[i]).get("grade_id") for i in graded]
    if len(set(ids)) != len(ids) or not all(ids):
        problems.append("every nbgrader cell needs a unique grade_id")
    for i in solutions:
        cell = nb.cells[i]
        if "### BEGIN SOLUTION" not in cell.source or "### END SOLUTION" not in cell.source:
            problems.append(f"solution cell {i} lacks ### BEGIN SOLUTION / ### END SOLUTION")
        if nbgrader(cell).get("locked") or nbgrader(cell).get("grade"):
            problems.append(f"solution cell {i} must be unlocked and ungraded")
    for i in tests:
        meta = nbgrader(nb.cells[i])
        if not (isinstance(meta.get("points"), int) and meta["points"] > 0):
            problems.append(f"test cell {i} needs integer points > 0")
        if not meta.get("locked") or meta.get("solution"):
            problems.append(f"test cell {i} must be locked and not a solution cell")
        if "### BEGIN HIDDEN TESTS" not in nb.cells[i].source:
            problems.append(f"test cell {i} has no hidden tests")
        previous = [j for j in solutions if j < i]
        if not previous or any(k in tests for k in range(previous[-1], i)):
            problems.append(f"test cell {i} must follow its own solution cell")
    prose = "\n".join(c.source for c in nb.cells[start:] if c.cell_type == "markdown")
    exercises = re.findall(r"^### Exercise \d+\b", prose, re.MULTILINE)
    if len(exercises) < 4:
        problems.append(f"expected at least four '### Exercise N: ...' headings, found {len(exercises)}")
    if not re.search(r"^###.*open questions", prose, re.MULTILINE | re.IGNORECASE):
        problems.append("the exercises need open questions, under a '### Open questions' heading")
    return problems


def check_kernel(nb, path=None):
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        return ["notebook metadata needs kernelspec name 'python3'"]
    return []


ALL_CHECKS = [
    check_no_outputs, check_title_and_badge, check_setup_cell, check_imports, check_standalone_sources,
    check_parameters_cell, check_plain_markdown, check_snippets, check_code_width, check_exercises, check_kernel,
]


def read(path):
    return nbformat.read(path, as_version=4)


def chapter_paths():
    return sorted((ROOT / "notebooks").glob("*.ipynb"))
