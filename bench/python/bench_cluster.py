#!/usr/bin/env python3
"""The cluster cases on mpi4py.futures' MPIPoolExecutor, the work of multiproc-mpi's
cluster-bench: run as `mpirun -n 3 python3 -m mpi4py.futures bench_cluster.py [--quick]`
(static mode: rank 0 runs this script, the 2 others serve as workers).

- cluster_apply_async: submit T tiny tasks (x*x), then wait for every result; tasks/s;
- cluster_map_small: executor.map(x*x) over N ints, with the chunksize multiprocessing.Pool.map
  (and our Pool) picks by default, ceil(N / (4 * workers)) (mpi4py's own default, 1, would
  send each item alone); items/s;
- cluster_bytes_1m: K tasks each taking 1 MiB of bytes (returning its length), 4 in flight;
  MB/s (10^6 bytes).

Three runs each; prints one JSON line with the medians (and every run)."""
import argparse
import collections
import json
import statistics
import time

from mpi4py.futures import MPIPoolExecutor


def sq(x):
    return x * x


def size(b):
    return len(b)


def measure(f, repeat=3):
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        units = f()
        rates.append(units / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    scale = 10 if a.quick else 1
    with MPIPoolExecutor() as ex:
        workers = ex.num_workers
        ex.submit(sq, 1).result()  # the workers are up

        t = 20_000 // scale

        def apply():
            fs = [ex.submit(sq, i) for i in range(t)]
            for i, f in enumerate(fs):
                assert f.result() == i * i
            return t

        n = 1_000_000 // scale
        chunk = -(-n // (4 * workers))

        def map_small():
            r = list(ex.map(sq, range(n), chunksize=chunk))
            assert len(r) == n and r[-1] == (n - 1) ** 2
            return n

        k = 200 // scale
        mib = bytes(1 << 20)

        def bytes_1m():
            inflight = collections.deque()
            for _ in range(k):
                if len(inflight) == 4:
                    assert inflight.popleft().result() == 1 << 20
                inflight.append(ex.submit(size, mib))
            for f in inflight:
                assert f.result() == 1 << 20
            return k * 1.048576

        out = {"workers": workers}
        for name, f in [
            ("cluster_apply_async", apply),
            ("cluster_map_small", map_small),
            ("cluster_bytes_1m", bytes_1m),
        ]:
            f()  # warm-up (smaller runs would do, but the same keeps it simple)
            med, runs = measure(f)
            out[name] = {"median": med, "runs": runs}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
