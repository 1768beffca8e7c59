# The README's contract: `make demo` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-compare sanlock qemu clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian's sanlock is the oracle the interop tests run against.  Installed only
# when we are root and it is missing; otherwise those tests skip (or fail under
# DISKPAXOS_REQUIRE_INTEROP=1).
sanlock:
	@if [ "$$(id -u)" = 0 ] && { ! command -v sanlock >/dev/null 2>&1 || \
	    ! dpkg -s python3-sanlock >/dev/null 2>&1 || ! command -v losetup >/dev/null 2>&1 || \
	    ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v strace >/dev/null 2>&1 || \
	    ! command -v fio >/dev/null 2>&1; }; then \
	    echo "installing sanlock, python3-sanlock, util-linux, e2fsprogs, strace and fio from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        sanlock python3-sanlock util-linux e2fsprogs strace fio >/dev/null; \
	fi

# QEMU for the VM front end's tests and the demo, installed the same way (root, missing).
qemu:
	@if [ "$$(id -u)" = 0 ] && { ! command -v qemu-system-x86_64 >/dev/null 2>&1 || \
	    ! command -v qemu-img >/dev/null 2>&1; }; then \
	    echo "installing qemu-system-x86 and qemu-utils from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 qemu-utils >/dev/null; \
	fi

demo: venv qemu
	DISKPAXOS=$(VENV)/bin/diskpaxos MKLOCKSPACE=$(VENV)/bin/mklockspace sh demo.sh

test: venv sanlock qemu
	$(PY) -m pytest -n 2 --dist loadfile tests

bench: venv sanlock
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only -p no:xdist

# side by side with live sanlock and diskpaxos daemons on file, 512 B and 4K loop devices and tmpfs
# (root); the results are kept under benchmarks/results
bench-compare: venv sanlock
	$(PY) -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/diskpaxos bench compare --output benchmarks/results/compare.json \
	    --plot benchmarks/results/compare.png > benchmarks/results/compare.txt
	cat benchmarks/results/compare.txt

clean:
	rm -rf $(VENV) demo build *.egg-info
