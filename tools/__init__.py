"""The book's build and assignment tools. Importing this package before nbformat saves a process
about 2 s of CPU (see below); the tests load it first as a pytest plugin (`-p tools` in
pytest.ini), ahead of nbmake, which imports nbformat."""
import sys

# jsonschema (under nbformat) imports rfc3987_syntax, when installed, only to check "iri" string
# formats, which the notebook schema never uses; building its grammar costs ~2 s of CPU in every
# process, and grading starts one process per submission: skip it (before nbformat is imported).
sys.modules.setdefault("rfc3987_syntax", None)
