# The two commands of the README. Each sets up .venv (and any missing Debian
# packages) on first use.
.PHONY: demo test lint bench fuzz clean

N ?= 200000

XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

demo:
	scripts/setup.sh demo
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
		.venv/bin/python -m napari_mrcz.demo; \
	else \
		$(XVFB) .venv/bin/python -m napari_mrcz.demo --screenshot demo-output/napari-mrcz-demo.png; \
	fi

test:
	scripts/setup.sh test
	.venv/bin/ruff check src tests benchmarks scripts
	$(XVFB) .venv/bin/python -m pytest

lint:
	.venv/bin/ruff check src tests benchmarks scripts

bench:
	scripts/setup.sh bench
	.venv/bin/python benchmarks/bench_codec.py
	.venv/bin/python benchmarks/bench_durable.py
	.venv/bin/python benchmarks/bench_edit.py
	.venv/bin/python benchmarks/bench_dm.py
	.venv/bin/python benchmarks/bench_portable.py
	.venv/bin/python benchmarks/bench_batch.py
	.venv/bin/python benchmarks/bench_ome_zarr.py
	.venv/bin/python benchmarks/bench_zarr_codecs.py
	$(XVFB) .venv/bin/python benchmarks/bench_napari.py
	$(XVFB) .venv/bin/python benchmarks/bench_remote.py

fuzz:
	scripts/setup.sh test
	.venv/bin/python -m tests.fuzzer --cases $(N) --seed random --keep fuzz-defects

clean:
	rm -rf .venv build dist demo-output .pytest_cache .ruff_cache fuzz-defects
