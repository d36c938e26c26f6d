"""Stand-in for Pachyderm's opencv example `edges.py`, without OpenCV.

The original reads each image under /pfs/images with cv2.imread, runs cv2.Canny and saves the
edges to /pfs/out as a PNG. This one keeps the shape (classic mode: one process per datum,
walking /pfs/images) but reads and writes PGM, the plain-text greyscale format, and marks a
pixel as an edge where the brightness changes sharply, in pure Python.
"""

import os

from pgm import read_pgm, write_pgm


def make_edges(image):
    width, height, rows = read_pgm(image)

    def at(r, c):
        return rows[min(max(r, 0), height - 1)][min(max(c, 0), width - 1)]

    edges = [[255 if abs(at(r, c + 1) - at(r, c - 1)) + abs(at(r + 1, c) - at(r - 1, c)) > 100
              else 0 for c in range(width)] for r in range(height)]
    tail = os.path.split(image)[1]
    write_pgm(os.path.join("/pfs/out", os.path.splitext(tail)[0] + ".pgm"), width, height, edges)


for dirpath, dirs, files in os.walk("/pfs/images"):
    for file in files:
        make_edges(os.path.join(dirpath, file))
