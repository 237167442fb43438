"""Large payloads (issue 17): Python's peers of the harness's `shared_buffer_handover`,
`pool_map_large` and `bandwidth_by_size` cases. Prints one JSON line.

- handover: a `multiprocessing.shared_memory.SharedMemory` block, created and filled before
  the clock starts, handed to a child by name over a Pipe; the child attaches, reads the
  first and last byte (`handover_us_<size>`) or every byte with `zlib.crc32`, C speed
  (`handover_read_us_<size>`), detaches and answers.
- pool_map: `Pool(2).map(f, 64 bytes objects of 4 MiB)` (default chunksize), f returning
  the sum of the object's 8-byte words (`pool_map_bytes_sum_MB_per_s`, pure Python) or its
  crc32 (`pool_map_bytes_crc_MB_per_s`, where the copy dominates). numpy arrays when numpy
  is installed (`pool_map_numpy_MB_per_s`).
- bandwidth: `Connection.send_bytes` of one size from a child, `recv_bytes` in the parent
  (`bw_MB_per_s_<size>`).

Start method: fork (Python's default on Linux before 3.14), as the harness's pool cases.
"""
import argparse
import json
import multiprocessing as mp
import statistics
import time
import zlib
from multiprocessing import shared_memory

KIB = 1024
MIB = 1024 * 1024


def label(size):
    return f"{size // MIB}MiB" if size >= MIB else f"{size // KIB}KiB"


def holder(conn, read_all):
    while True:
        name = conn.recv()
        if name is None:
            return
        shm = shared_memory.SharedMemory(name=name)
        buf = shm.buf
        x = zlib.crc32(buf) if read_all else buf[0] + buf[len(buf) - 1]
        del buf
        shm.close()
        conn.send(x)


def handover(size, rounds, read_all):
    shm = shared_memory.SharedMemory(create=True, size=size)
    shm.buf[:] = b"\xab" * size
    a, b = mp.Pipe()
    p = mp.Process(target=holder, args=(b, read_all))
    p.start()
    for _ in range(2):
        a.send(shm.name)
        a.recv()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        a.send(shm.name)
        a.recv()
        times.append((time.perf_counter() - t) * 1e6)
    a.send(None)
    p.join()
    shm.close()
    shm.unlink()
    return statistics.median(times)


def word_sum(b):
    return sum(memoryview(b).cast("Q")) & 0xFFFFFFFFFFFFFFFF


def crc(b):
    return zlib.crc32(b)


def numpy_sum(a):
    return int(a.sum())


def pool_map(f, items, repeat):
    total = sum(len(memoryview(x).cast("B")) for x in items)
    rates = []
    with mp.Pool(2) as pool:
        pool.map(f, items[:2])
        for _ in range(repeat):
            t = time.perf_counter()
            pool.map(f, items)
            rates.append(total / (time.perf_counter() - t) / 1e6)
    return statistics.median(rates)


def sink(conn, n, size):
    buf = bytearray(size)
    for _ in range(n):
        conn.recv_bytes_into(buf)
    conn.send_bytes(b"done")


def source(conn, n, size):
    payload = b"\xcd" * size
    conn.recv_bytes()
    for _ in range(n):
        conn.send_bytes(payload)


def bandwidth(size, n, repeat):
    rates = []
    for _ in range(repeat):
        a, b = mp.Pipe()
        p = mp.Process(target=source, args=(b, n, size))
        p.start()
        buf = bytearray(size)
        t = time.perf_counter()
        a.send_bytes(b"go")
        for _ in range(n):
            a.recv_bytes_into(buf)
        rates.append(n * size / (time.perf_counter() - t) / 1e6)
        p.join()
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="handover,pool_map,bandwidth")
    args = ap.parse_args()
    mp.set_start_method("fork")
    repeat = 3 if args.quick else 5
    only = args.only.split(",")
    out = {}
    if "handover" in only:
        for size, rounds in ((MIB, 200), (16 * MIB, 100), (256 * MIB, 20)):
            rounds = max(5, rounds // (4 if args.quick else 1))
            out[f"handover_us_{label(size)}"] = handover(size, rounds, False)
            out[f"handover_read_us_{label(size)}"] = handover(size, max(3, rounds // 4), True)
    if "pool_map" in only:
        items = [bytes([i]) * (4 * MIB) for i in range(64)]
        out["pool_map_bytes_sum_MB_per_s"] = pool_map(word_sum, items, 1 if args.quick else 3)
        out["pool_map_bytes_crc_MB_per_s"] = pool_map(crc, items, repeat)
        try:
            import numpy as np

            arrays = [np.full(MIB // 2, i, dtype=np.uint64) for i in range(64)]
            out["pool_map_numpy_MB_per_s"] = pool_map(numpy_sum, arrays, repeat)
        except ImportError:
            out["numpy"] = "not installed"
    if "bandwidth" in only:
        for size in (4 * KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB):
            n = min(20000, max(8, (256 * MIB) // size))
            if args.quick:
                n = max(4, n // 8)
            out[f"bw_MB_per_s_{label(size)}"] = bandwidth(size, n, repeat)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
