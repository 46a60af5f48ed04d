# Ami: `make demo` runs the Bookinfo mesh, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test workers: one per CPU, at most 4 (the suite is checked at 2); TEST_JOBS=0 runs in-process.
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

.PHONY: demo test lint bench bench-controlplane soak venv clean proto

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

GOOGLEAPIS = $(shell $(PY) -c 'import google.rpc.status_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. meshctl/api/mesh.proto
	# Envoy's ext_authz API (its google.rpc.Status from googleapis-common-protos' .proto files)
	$(PY) -m grpc_tools.protoc -I. -I$(GOOGLEAPIS) --python_out=. --pyi_out=. \
		proxy/authzproto/core.proto proxy/authzproto/http_status.proto
	$(PY) -m grpc_tools.protoc -I. -I$(GOOGLEAPIS) --python_out=. --grpc_python_out=. \
		--pyi_out=. proxy/authzproto/external_auth.proto

test: $(STAMP)
	$(PY) -m pytest -q -ra -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check proxy meshctl sample_apps tests bench
	$(VENV)/bin/mypy proxy meshctl bench

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-controlplane: $(STAMP)
	$(PY) -m bench.controlplane $(BENCH_ARGS)

soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

demo: $(STAMP)
	$(VENV)/bin/meshctl demo up

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
