PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := demo-out

.PHONY: install demo readme readme-check test fixtures bench signatures fuzz clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test,onnx,s3,ray]"
	touch $(STAMP)

fixtures: install
	$(PY) fixtures/make_fixtures.py $(DEMO_DIR)/models

demo: install
	rm -rf $(DEMO_DIR)
	$(PY) fixtures/demo.py $(DEMO_DIR) --vgg

readme: install
	$(PY) fixtures/readme_tour.py --update

readme-check: install
	$(PY) fixtures/readme_tour.py

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: install
	$(PY) bench/run.py

signatures: install
	$(PY) ckpt_migrate/architectures/build_index.py

fuzz: install
	$(PY) fuzz/fuzz_interpreter.py --seconds 600

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
