"""Stand-in for ImageMagick's `montage`, as Pachyderm's opencv example calls it.

`python3 montage.py IMAGE... OUTPUT` puts the plain PGM images side by side, on a grey
background with a 2-pixel margin, into one PGM.
"""

import sys

from pgm import read_pgm, write_pgm

*images, output = sys.argv[1:]
tiles = [read_pgm(path) for path in images]
height = max(h for _, h, _ in tiles) + 4
width = sum(w + 4 for w, _, _ in tiles)
canvas = [[128] * width for _ in range(height)]
left = 0
for w, h, rows in tiles:
    for r in range(h):
        canvas[r + 2][left + 2:left + 2 + w] = rows[r]
    left += w + 4
write_pgm(output, width, height, canvas)
