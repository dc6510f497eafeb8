"""Write the natural long tail of issue 25 (20 Newsgroups: 10 classes at their bydate counts, 10 on a
Zipf tail down to one post) as JSONL for the own-data text path (longtail.data.text.export_natural_tail).

    python benchmarks/build_natural_tail.py --root ../shared/data --out .data/ng_natural_tail.jsonl --seed 0
"""
import argparse

from longtail.data.text import export_natural_tail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="../shared/data", help="20news-bydate tarball or folder")
    p.add_argument("--out", default=".data/ng_natural_tail.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-natural", type=int, default=10)
    p.add_argument("--top", type=float, default=40.0)
    p.add_argument("--exponent", type=float, default=1.6)
    a = p.parse_args()
    path = export_natural_tail(a.root, a.out, seed=a.seed, num_natural=a.num_natural, top=a.top, exponent=a.exponent)
    import json
    from collections import Counter

    counts = Counter(json.loads(line)["label"] for line in open(path) if '"split": "train"' in line)
    print(f"wrote {path}: {sum(counts.values())} training posts, counts {sorted(counts.values(), reverse=True)}")


if __name__ == "__main__":
    main()
