"""Score the sentiment of reviews with a model that takes seconds to load.

Starting this program once per review would pay the load every time; with datum
batching it is paid once, and `batch_datums` calls `score_review` for each datum
with /pfs showing that datum's files and os.environ holding its variables.
"""

import json
import os
import time
from pathlib import Path

from pfsmount import batch_datums


def load_model() -> dict[str, float]:
    """Stands in for loading weights: slow, and done once."""
    time.sleep(float(os.environ.get("MODEL_WARMUP_SECONDS", "2")))
    positive = "great good love excellent wonderful happy best fine".split()
    negative = "bad awful hate terrible poor worst broken sad".split()
    return {**{w: 1.0 for w in positive}, **{w: -1.0 for w in negative}}


started = time.monotonic()
MODEL = load_model()
print(f"model loaded in {time.monotonic() - started:.1f}s", flush=True)


@batch_datums
def score_review() -> None:
    review = Path(os.environ["reviews"])  # /pfs/reviews/<year>/<file>
    words = review.read_text().lower().split()
    score = sum(MODEL.get(w.strip(".,!?"), 0.0) for w in words) / max(len(words), 1)
    year = review.parent.name
    out = Path("/pfs/out")
    (out / year).mkdir(exist_ok=True)
    result = {"review": review.name, "datum": os.environ["PACH_DATUM_ID"], "score": score}
    (out / year / f"{review.stem}.json").write_text(json.dumps(result) + "\n")
    print(f"{year}/{review.name}: {score:+.3f}")


if __name__ == "__main__":
    score_review()
