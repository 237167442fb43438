#!/usr/bin/env python3
"""multiprocessing.Queue with 2 producer and 2 consumer processes, small messages
((producer id, n) tuples), as the harness's queue_mpmc case: each consumer checks that
every producer's items arrive in order and reports its count; total msgs/s. The clock
starts when the parent releases the already-started processes and stops when both
consumers have reported. Not part of ../shared/bench/python: written for this harness."""
import argparse
import json
import multiprocessing as mp
import statistics
import time

STOP = (-1, 0)


def producer(q, go, ident, per):
    go.wait()
    for n in range(per):
        q.put((ident, n))
    q.close()
    q.join_thread()


def consumer(q, done):
    last = {}
    count = 0
    while True:
        ident, n = q.get()
        if ident < 0:
            break
        if last.get(ident, -1) >= n:
            raise RuntimeError("order broken")
        last[ident] = n
        count += 1
    done.put(count)


def one_run(ctx, per):
    q, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    producers = [ctx.Process(target=producer, args=(q, go, i, per)) for i in range(2)]
    consumers = [ctx.Process(target=consumer, args=(q, done)) for _ in range(2)]
    for p in producers + consumers:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for p in producers:
        p.join()
    q.put(STOP)
    q.put(STOP)
    total = done.get() + done.get()
    dt = time.perf_counter() - t0
    for p in consumers:
        p.join()
    if total != 2 * per:
        raise RuntimeError("lost messages")
    return total / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--method", default=None)
    ap.add_argument("--repeat", type=int, help="default 5")
    a = ap.parse_args()
    ctx = mp.get_context(a.method)
    per = 25_000 if a.quick else 100_000
    repeat = a.repeat or (1 if a.quick else 5)
    rates = [one_run(ctx, per) for _ in range(repeat)]
    print(json.dumps({
        "bench": "queue_mpmc",
        "method": ctx.get_start_method(),
        "per_producer": per,
        "repeat": repeat,
        "mpmc_msgs_per_s": round(statistics.median(rates)),
    }))


if __name__ == "__main__":
    main()
