"""Plain PGM (P2) images: the example's stand-in for PNG, readable without libraries."""


def read_pgm(path):
    with open(path) as f:
        tokens = [t for line in f for t in line.split("#")[0].split()]
    if tokens[0] != "P2":
        raise SystemExit(f"{path}: not a plain PGM (P2) image")
    width, height, top = int(tokens[1]), int(tokens[2]), int(tokens[3])
    pixels = [int(t) * 255 // top for t in tokens[4:4 + width * height]]
    return width, height, [pixels[r * width:(r + 1) * width] for r in range(height)]


def write_pgm(path, width, height, rows):
    with open(path, "w") as f:
        f.write(f"P2\n{width} {height}\n255\n")
        for row in rows:
            f.write(" ".join(map(str, row)) + "\n")
