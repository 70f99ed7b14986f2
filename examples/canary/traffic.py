"""Send iris rows to a deployment for a while and count who answered how.

Usage: python examples/canary/traffic.py [URL] [SECONDS]
Sends SHIPYARD_API_KEY as a bearer token when it is set (a server with keys needs one).
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main(url: str, seconds: float) -> None:
    with Path("examples/build/iris-example.csv").open() as examples:
        rows = list(csv.DictReader(examples))
    answered: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    key = os.environ.get("SHIPYARD_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=30, headers=headers) as http:
        while time.monotonic() < deadline:
            for row in rows:
                body = {"inputs": [{"name": f, "shape": [1], "datatype": "FP64",
                                    "data": [float(row[f])]} for f in FEATURES]}  # fmt: skip
                answer = http.post(f"{url}/v2/models/iris-api/infer", json=body)
                version = answer.headers.get("x-shipyard-model-version", "?")
                answered[f"{answer.status_code} from {version}"] += 1
                if time.monotonic() >= deadline:
                    break
    for outcome, count in answered.most_common():
        print(f"{count:6d}  {outcome}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000",
         float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)  # fmt: skip
