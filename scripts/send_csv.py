"""Send the rows of a CSV file to a running gateway as V2 inference requests (the drift demo uses it).

python scripts/send_csv.py config/data/breast_cancer_shifted.csv --version canary --repeat 4
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import httpx
import orjson


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="CSV with a header; feature columns first")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="breast_cancer")
    parser.add_argument("--version", help="pin a version (name or number); default: let the routing decide")
    parser.add_argument("--input", default="input", help="the model's input name")
    parser.add_argument("--drop-column", default="target", help="column to leave out (the label)")
    parser.add_argument("--batch", type=int, default=10, help="rows per request")
    parser.add_argument("--repeat", type=int, default=1, help="send the file this many times")
    args = parser.parse_args(argv)

    with args.data.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        keep = [i for i, name in enumerate(header) if name != args.drop_column]
        rows = [[float(row[i]) for i in keep] for row in reader]
    path = f"/v2/models/{args.model}" + (f"/versions/{args.version}" if args.version else "") + "/infer"
    served: dict[str, int] = {}
    with httpx.Client(base_url=args.url, timeout=30) as client:
        for _ in range(args.repeat):
            for start in range(0, len(rows), args.batch):
                chunk = rows[start : start + args.batch]
                body = {"inputs": [{"name": args.input, "shape": [len(chunk), len(keep)], "datatype": "FP32",
                                    "data": chunk}]}  # fmt: skip
                response = client.post(path, content=orjson.dumps(body))
                if response.status_code != 200:
                    print(f"error {response.status_code}: {response.text}", file=sys.stderr)
                    return 1
                version = response.json()["model_version"]
                served[version] = served.get(version, 0) + len(chunk)
    print(f"sent {len(rows) * args.repeat} rows to {args.url}{path}; rows served by version: {served}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
