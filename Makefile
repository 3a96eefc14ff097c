# Two entry points for a fresh machine: `make demo` runs the main job on the bundled model and
# reference stream; `make test` runs the test suite. Both install what they need first.

VENV := .venv
STREAM := bench/streams/allison-3min
METRICS_PORT ?= 9108

.PHONY: setup demo demo-fast test lint

setup:
	./scripts/bootstrap.sh

demo: setup
	rm -f out/demo-events.jsonl
	$(VENV)/bin/kwstream replay $(STREAM).flac --labels $(STREAM).csv --speed realtime \
		--metrics-port $(METRICS_PORT) --report out/demo-report.json --events out/demo-events.jsonl

demo-fast: setup
	rm -f out/demo-events.jsonl
	$(VENV)/bin/kwstream replay $(STREAM).flac --labels $(STREAM).csv --report out/demo-report.json \
		--events out/demo-events.jsonl

test: setup
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check service tests bench
