# Two entry points (see README.md):
#   make book   set up, execute every notebook on its full schedule, render _build/html
#   make test   set up, execute every notebook on its CI schedule, render the site, run the tests
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: book test venv student clean

book: $(STAMP)
	$(PY) -m tools.build --schedule full

# The tests run two notebooks at a time on CI's two cores: one OpenMP thread each, or the
# threads spin against each other.
test: export OMP_NUM_THREADS ?= 1
test: $(STAMP)
	$(PY) -m tools.build --schedule ci
	$(PY) -m pytest tests

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

clean:
	rm -rf _build
