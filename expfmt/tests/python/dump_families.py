"""Print how Python's prometheus_client (text format 0.0.4) reads a /metrics page, as JSON.

The collector's parser is checked against this on every captured page in shared/fixtures.
Usage: python dump_families.py PAGE.txt
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def number(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
    return v


def main(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for fam in text_string_to_metric_families(text):
        out.append({
            "name": fam.name,
            "type": fam.type,
            "help": fam.documentation,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": number(s.value),
                 "timestamp": None if s.timestamp is None else float(s.timestamp)}
                for s in fam.samples
            ],
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
