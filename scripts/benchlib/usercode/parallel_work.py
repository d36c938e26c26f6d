"""User code of the `parallel` benchmark: one kind of work per datum, timed.

`parallel_work.py cpu N` spins N iterations of pure Python per datum, `io SECONDS` sleeps,
`none` does nothing. Each datum's output is `<port> <start> <end>` (time.time()), so the
benchmark can tell the workers apart and see when each datum ran.
"""

import os
import sys
import time

from pfsmount import iter_datums


def main() -> None:
    kind = sys.argv[1]
    amount = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    port = os.environ.get("PPS_WORKER_GRPC_PORT", "0")
    for datum in iter_datums():
        path = dict(datum.env)["files"]
        start = time.time()
        if kind == "cpu":
            total = 0
            for i in range(int(amount)):
                total += i * i
        elif kind == "io":
            time.sleep(amount)
        with open(os.path.join(os.path.dirname(os.path.dirname(path)), "out",
                               os.path.basename(path)), "w") as f:
            f.write(f"{port} {start:.6f} {time.time():.6f}\n")


if __name__ == "__main__":
    main()
