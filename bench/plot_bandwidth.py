#!/usr/bin/env python3
"""Draws bench/bandwidth_by_size.png from a harness run: bandwidth (MB/s, log scale) by
message size (log scale) for our `send_bytes`, ipc-channel's bytes channel, Python's
`send_bytes`, and our `SharedBuffer` handed over and read whole.

    cargo run --release -p multiproc-bench -- bandwidth_by_size > run.txt
    python3 bench/plot_bandwidth.py run.txt [out.png]

Uses only the standard library (zlib + struct write the PNG, a 3x5 pixel font the labels),
so that the chart needs no plotting package.
"""
import json
import math
import struct
import sys
import zlib

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 180, 30, 50
SIZES = [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("256KiB", 256 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20), ("64MiB", 64 << 20)]
SERIES = [
    ("ours_pipe_", "OURS PIPE", (31, 119, 180)),
    ("ipc_channel_", "IPC-CHANNEL", (255, 127, 14)),
    ("python_", "PYTHON PIPE", (44, 160, 44)),
    ("ours_shared_read_all_", "OURS SHARED", (214, 39, 40)),
    ("ours_socket_", "OURS SOCKET", (148, 103, 189)),
    ("ours_socket_out_of_band_", "OURS SOCKET OOB", (140, 86, 75)),
]

# 3x5 glyphs, five rows of three, '#' = ink.
GLYPHS = """
0 ### #.# #.# #.# ###|1 .#. ##. .#. .#. ###|2 ### ..# ### #.. ###|3 ### ..# ### ..# ###
4 #.# #.# ### ..# ..#|5 ### #.. ### ..# ###|6 ### #.. ### #.# ###|7 ### ..# ..# ..# ..#
8 ### #.# ### #.# ###|9 ### #.# ### ..# ###|A .#. #.# ### #.# #.#|B ##. #.# ##. #.# ##.
C ### #.. #.. #.. ###|D ##. #.# #.# #.# ##.|E ### #.. ### #.. ###|F ### #.. ### #.. #..
G ### #.. #.# #.# ###|H #.# #.# ### #.# #.#|I ### .#. .#. .#. ###|J ..# ..# ..# #.# ###
K #.# #.# ##. #.# #.#|L #.. #.. #.. #.. ###|M #.# ### ### #.# #.#|N ##. #.# #.# #.# #.#
O ### #.# #.# #.# ###|P ### #.# ### #.. #..|Q ### #.# #.# ### ..#|R ### #.# ##. #.# #.#
S ### #.. ### ..# ###|T ### .#. .#. .#. .#.|U #.# #.# #.# #.# ###|V #.# #.# #.# #.# .#.
W #.# #.# ### ### #.#|X #.# #.# .#. #.# #.#|Y #.# #.# .#. .#. .#.|Z ### ..# .#. #.. ###
/ ..# ..# .#. #.. #..|- ... ... ### ... ...|. ... ... ... ... .#.|_ ... ... ... ... ###
( .#. #.. #.. #.. .#.|) .#. ..# ..# ..# .#.
"""
FONT = {" ": "." * 15}
for line in GLYPHS.strip().splitlines():
    for item in line.split("|"):
        ch, *rows = item.split()
        FONT[ch] = "".join(rows)


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(y0, y1):
            for x in range(x0, x1):
                self.dot(x, y, c)

    def line(self, x0, y0, x1, y1, c, width=2):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = round(x0 + (x1 - x0) * s / steps)
            y = round(y0 + (y1 - y0) * s / steps)
            self.rect(x - width // 2, y - width // 2, x - width // 2 + width, y - width // 2 + width, c)

    def text(self, x, y, s, c=(0, 0, 0), scale=2):
        for ch in s.upper():
            glyph = FONT.get(ch, FONT[" "])
            for row in range(5):
                for col in range(3):
                    if glyph[row * 3 + col] == "#":
                        self.rect(x + col * scale, y + row * scale, x + (col + 1) * scale, y + (row + 1) * scale, c)
            x += 4 * scale

    def png(self):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "-"
    out = sys.argv[2] if len(sys.argv) > 2 else "bench/bandwidth_by_size.png"
    lines = (sys.stdin if src == "-" else open(src)).read().splitlines()
    row = None
    for l in lines:
        try:
            v = json.loads(l)
        except ValueError:
            continue
        if isinstance(v, dict) and v.get("case") == "bandwidth_by_size":
            row = v
    if row is None:
        sys.exit("no bandwidth_by_size row in the input")
    peer = row["peer"]
    values = [v for v in peer.values() if v > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    c = Canvas(W, H)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def xy(i, mbs):
        x = LEFT + round(pw * i / (len(SIZES) - 1))
        y = TOP + round(ph * (1 - (math.log10(mbs) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))))
        return x, y

    grey = (210, 210, 210)
    decade = lo
    while decade <= hi:
        _, y = xy(0, decade)
        c.line(LEFT, y, LEFT + pw, y, grey, 1)
        c.text(8, y - 5, str(int(decade)))
        decade *= 10
    for i, (name, _) in enumerate(SIZES):
        x, _ = xy(i, lo)
        c.line(x, TOP, x, TOP + ph, grey, 1)
        c.text(x - len(name) * 4, TOP + ph + 10, name)
    c.line(LEFT, TOP, LEFT, TOP + ph, (0, 0, 0), 1)
    c.line(LEFT, TOP + ph, LEFT + pw, TOP + ph, (0, 0, 0), 1)
    c.text(LEFT, 8, "ONE-WAY MB/S BY MESSAGE SIZE (LOG-LOG). SHARED IS HAND-OVER AND READ ALL")
    c.text(LEFT + pw // 2 - 60, H - 18, "MESSAGE SIZE")
    for k, (prefix, label, colour) in enumerate(SERIES):
        points = [(i, peer.get(prefix + name)) for i, (name, _) in enumerate(SIZES)]
        points = [xy(i, v) for i, v in points if v]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            c.line(x0, y0, x1, y1, colour, 3)
        for x, y in points:
            c.rect(x - 3, y - 3, x + 4, y + 4, colour)
        ly = TOP + 20 + k * 24
        c.rect(LEFT + pw + 12, ly, LEFT + pw + 28, ly + 10, colour)
        c.text(LEFT + pw + 34, ly, label)
    with open(out, "wb") as f:
        f.write(c.png())
    print(out)


if __name__ == "__main__":
    main()
