# Two entry points (see README.md):
#   make book   set up, execute every notebook on its full schedule, render _build/html
#   make test   set up, execute every notebook on its CI schedule, render the site, run the tests
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHELL  := /bin/bash

.PHONY: book test venv student clean

# Unchanged chapters come from the build cache (_build/cache): only edited ones run again.
book: $(STAMP)
	$(PY) -m tools.build --schedule full

# Static checks first (seconds, before any notebook runs), then the notebooks, then every other
# test, two test files at a time (much of their time is spent waiting on kernels, browsers and
# time limits; each file stays on one worker, so its expensive fixtures run once). Each step runs
# even when an earlier one failed, so one broken notebook hides no other result; the exit status
# reports them all. Each step's time is printed for the CI budget.
test: $(STAMP)
	@status=0; start=$$SECONDS; \
	$(PY) -m pytest tests/test_conventions.py -q || status=1; \
	static=$$SECONDS; \
	$(PY) -m tools.build --schedule ci || status=1; \
	built=$$SECONDS; \
	$(PY) -m pytest tests --ignore=tests/test_conventions.py -n 2 --dist loadfile || status=1; \
	echo "make test: static checks $$((static - start)) s, notebooks and site $$((built - static)) s," \
	     "other tests $$((SECONDS - built)) s"; \
	exit $$status

venv: $(STAMP)

# Regenerate the student versions (student/) after changing a chapter; commit them with it.
student: $(STAMP)
	$(PY) -m tools.assignments release

# The environment is rebuilt whenever a requirements file or package.json changes.
$(STAMP): requirements.txt requirements-nodeps.txt package.json package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (book)"
	npm ci --no-audit --no-fund --silent
	touch $(STAMP)

# Every build output: the site, the results, the cache, the notebooks' run folders.
clean:
	rm -rf _build _runs
