#!/usr/bin/env python3
"""(m) multiprocessing.Manager: DictProxy set (d['k'] = i) and get (d['k']) round trips,
microseconds per operation, one process; two processes each doing M increments of one
shared counter d['k'] under m.Lock(), microseconds per increment (total wall time / total
increments), the final count checked; and the same without the lock, to show the share of
updates lost."""
import argparse
import json
import multiprocessing as mp
import statistics
import time


def dict_ops(m, n):
    d = m.dict()
    d["k"] = 0
    t0 = time.perf_counter_ns()
    for i in range(n):
        d["k"] = i
    t_set = (time.perf_counter_ns() - t0) / n / 1000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        d["k"]
    t_get = (time.perf_counter_ns() - t0) / n / 1000
    return t_set, t_get


def incr(d, lock, go, m):
    go.wait()
    for _ in range(m):
        if lock is None:
            d["k"] += 1
        else:
            with lock:
                d["k"] += 1


def counter(ctx, mgr, m, locked):
    d = mgr.dict()
    d["k"] = 0
    lock = mgr.Lock() if locked else None
    go = ctx.Event()
    ps = [ctx.Process(target=incr, args=(d, lock, go, m)) for _ in range(2)]
    for p in ps:
        p.start()
    time.sleep(0.1)
    t0 = time.perf_counter_ns()
    go.set()
    for p in ps:
        p.join()
    dt = time.perf_counter_ns() - t0
    final = d["k"]
    if locked and final != 2 * m:
        raise RuntimeError("lost updates under the lock: %d != %d" % (final, 2 * m))
    return dt / (2 * m) / 1000, 1 - final / (2 * m)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--method", default=None)
    ap.add_argument("--repeat", type=int, help="default 5")
    a = ap.parse_args()
    ctx = mp.get_context(a.method)
    repeat = a.repeat or (3 if a.quick else 5)
    n = 5_000 if a.quick else 20_000
    m = 2_000 if a.quick else 5_000
    med = statistics.median
    out = {"bench": "manager", "method": ctx.get_start_method(), "repeat": repeat,
           "dict_ops": n, "incr_per_proc": m}
    with ctx.Manager() as mgr:
        runs = [dict_ops(mgr, n) for _ in range(repeat)]
        out["us_per_set"] = round(med(r[0] for r in runs), 2)
        out["us_per_get"] = round(med(r[1] for r in runs), 2)
        out["us_per_op"] = round(med((r[0] + r[1]) / 2 for r in runs), 2)
        locked = [counter(ctx, mgr, m, True) for _ in range(repeat)]
        out["counter_2proc_us_per_locked_incr"] = round(med(r[0] for r in locked), 2)
        lossy = [counter(ctx, mgr, m, False) for _ in range(repeat)]
        out["counter_2proc_us_per_unlocked_incr"] = round(med(r[0] for r in lossy), 2)
        out["counter_2proc_unlocked_lost_fraction"] = round(med(r[1] for r in lossy), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
