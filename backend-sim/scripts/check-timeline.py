#!/usr/bin/env python3
"""Check a notifier-sim timeline the way a reader looks at it.

usage: check-timeline.py TIMELINE.svg TIMELINE.png LANE|none

The SVG's structure: a legend, the shared x-axis with values, a y-axis with values in
every lane, and the stale marks only in the lane of the consumer at fault (LANE: kvm,
device-tlb, importers, mirror, two-pass; `none` for a coherent run, which must have no
mark and no close-up), with the close-up of the first stale access for that lane. The
PNG (rendered by rsvg-convert): its size is the SVG's, the axis lines are drawn, and
each stale mark is red where the SVG puts it, inside its lane's band.
"""

import struct
import sys
import xml.etree.ElementTree as ET
import zlib

NS = "{http://www.w3.org/2000/svg}"


def fail(msg):
    print(f"check-timeline: {msg}", file=sys.stderr)
    sys.exit(1)


def png_pixels(path):
    """Width, height and a pixel function of an 8-bit RGB(A) non-interlaced PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path} is not a PNG")
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                fail(f"unexpected PNG format (depth {depth}, colour type {ctype})")
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        rows.append(line)
        prev = line

    def px(x, y):
        x, y = int(round(x)), int(round(y))
        r = rows[y][x * bpp : x * bpp + 3]
        return tuple(r)

    return w, h, px


def main():
    if len(sys.argv) != 4:
        fail(__doc__.strip().splitlines()[2])
    svg_path, png_path, lane = sys.argv[1:]
    root = ET.parse(svg_path).getroot()
    width, height = float(root.get("width")), float(root.get("height"))
    groups = {g.get("id"): g for g in root.iter(NS + "g") if g.get("id")}
    if "legend" not in groups:
        fail("no legend")
    xa = groups.get("x-axis")
    if xa is None or len(xa.findall(NS + "text")) < 4:
        fail("no x-axis with values")
    lanes = {k[5:]: g for k, g in groups.items() if k.startswith("lane-")}
    if not lanes:
        fail("no lanes")
    for name, g in lanes.items():
        ya = groups.get(f"y-axis-{name}")
        if ya is None or len(ya.findall(NS + "text")) < 2:
            fail(f"lane {name} has no y-axis with values")
    marks = []
    for name, g in lanes.items():
        top, bottom = float(g.get("data-top")), float(g.get("data-bottom"))
        for m in g.iter(NS + "polygon"):
            if m.get("class") == "stale-mark":
                x, y = float(m.get("data-x")), float(m.get("data-y"))
                if name != lane:
                    fail(f"a stale mark in lane {name}, expected only in {lane}")
                if not top <= y <= bottom:
                    fail(f"a stale mark at y={y} outside its lane [{top}, {bottom}]")
                marks.append((x, y))
    all_marks = [p for p in root.iter(NS + "polygon") if p.get("class") == "stale-mark"]
    if len(all_marks) != len(marks):
        fail("a stale mark outside every lane")
    zoom = groups.get("zoom")
    if lane == "none":
        if marks or zoom is not None:
            fail("a coherent run with stale marks or a close-up")
    else:
        if lane not in lanes:
            fail(f"no lane {lane}")
        if not marks:
            fail(f"no stale mark in lane {lane}")
        if zoom is None or zoom.get("data-lane") != lane:
            fail(f"no close-up for lane {lane}")
        classes = {e.get("class") for e in zoom.iter() if e.get("class")}
        for want in ("zoom-install", "zoom-stale_use"):
            if want not in classes:
                fail(f"the close-up has no {want} mark: {sorted(classes)}")
        if not any(c.startswith("zoom-invalidate") or c == "zoom-frame_freed" for c in classes):
            fail(f"the close-up shows nothing of the primary side: {sorted(classes)}")

    w, h, px = png_pixels(png_path)
    if (w, h) != (int(width), int(height)):
        fail(f"PNG is {w}x{h}, the SVG {width}x{height}")
    ay = float(xa.get("data-y"))
    dark = [px(x, y) for x in range(250, 260) for y in (ay - 1, ay, ay + 1)]
    if not any(max(p) < 120 for p in dark):
        fail(f"the x-axis line is not drawn at y={ay}: {dark}")
    for x, y in marks:
        r, g, b = px(x, y)
        if not (r > 170 and g < 110 and b < 110):
            fail(f"the stale mark at ({x}, {y}) is not red in the PNG: {(r, g, b)}")
    print(
        f"check-timeline: {svg_path}: {len(lanes)} lanes with axes, "
        f"{len(marks)} stale mark(s) in lane {lane}, PNG {w}x{h} matches"
    )


main()
