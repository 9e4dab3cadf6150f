# The two commands of the README. Each sets up .venv (and any missing Debian
# packages) on first use.
.PHONY: demo test lint bench clean

demo:
	scripts/setup.sh demo
	.venv/bin/python -m napari_mrcz.demo

test:
	scripts/setup.sh test
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check src tests benchmarks

bench:
	scripts/setup.sh bench
	.venv/bin/python benchmarks/bench_codec.py

clean:
	rm -rf .venv build dist demo-output .pytest_cache .ruff_cache
