"""Benchmark: build and load the Stage A dataset (prints figures; not a timed test).

    .venv/bin/python benchmarks/bench_data.py [--cache-dir DIR] [--nimgs 2]

Stage A spec: N=64, S=392, 400 lines, nimgs 2/2, nphotons 1e9, set_phi, defocused-disk probe.
Build and load each run in a fresh child process so that each peak-memory figure is that
step's own. Peak memory is the rise of the resident set (``ru_maxrss`` minus the RSS just before
the step, after torch is imported) and, separately, the numpy-only peak seen by tracemalloc.
Targets (issue 2): build <= 20 s, load <= 2 s, peak <= 2x the stored arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(step: str, cache_dir: str, nimgs: int) -> None:
    import torch  # noqa: F401  (imported before the baseline: not part of the step's memory)

    from ptychostab.data import DataConfig, load_or_build

    spec = DataConfig(name="grid_lines_n64", N=64, size=392, n_lines=400, nimgs_train=nimgs,
                      nimgs_test=nimgs, nphotons=1e9, set_phi=True)
    base = _rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    data = load_or_build(spec, cache_dir)
    seconds = time.perf_counter() - t0
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({
        "step": step, "status": data.meta["cache_status"], "seconds": seconds,
        "rss_peak_delta": maxrss - base, "numpy_peak": numpy_peak, "stored": data.nbytes,
        "n_train": data.meta["n_train"], "n_test": data.meta["n_test"],
        "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--nimgs", type=int, default=2)
    parser.add_argument("--_child", choices=("build", "load"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(args._child, args.cache_dir, args.nimgs)
        return

    with tempfile.TemporaryDirectory(prefix="ptychostab-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        results = {}
        for step in ("build", "load"):
            out = subprocess.run(
                [sys.executable, __file__, "--_child", step, "--cache-dir", cache_dir,
                 "--nimgs", str(args.nimgs)], check=True, capture_output=True, text=True)
            results[step] = json.loads(out.stdout.strip().splitlines()[-1])
        size = sum(os.path.getsize(os.path.join(cache_dir, f)) for f in os.listdir(cache_dir)
                   if f.endswith(".npz"))

    mib = 1 << 20
    stored = results["build"]["stored"]
    print(f"Stage A data: {results['build']['n_train']} train / {results['build']['n_test']} test "
          f"patterns, stored arrays {stored / mib:.1f} MiB, cache file {size / mib:.1f} MiB, "
          f"cpus {os.cpu_count()}, torch threads {results['build']['torch_threads']}")
    targets = {"build": 20.0, "load": 2.0}
    for step, r in results.items():
        ratio = r["rss_peak_delta"] / stored
        print(f"{step:5s} ({r['status']:5s}): {r['seconds']:6.2f} s (target <= {targets[step]:.0f}"
              f" s)  peak RSS rise {r['rss_peak_delta'] / mib:7.1f} MiB = {ratio:.2f}x stored "
              f"(target <= 2x)  numpy peak {r['numpy_peak'] / mib:7.1f} MiB = "
              f"{r['numpy_peak'] / stored:.2f}x")


if __name__ == "__main__":
    main()
