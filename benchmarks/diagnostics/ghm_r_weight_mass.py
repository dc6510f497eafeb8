"""Where GHM-CWAP's R term puts each class's weight (issue 24 diagnosis).

For a trained image run (its ``config.yaml`` and ``stage0_stage1.pt``), the gradient norm
``g = 1 - p_y`` of every un-augmented training image is counted per class into the loss's own
URA histogram (30 regions, alpha 0.9; the whole class as the window) and the loss's category
weights ``W = v^-alpha / E_c[v^-alpha]`` (class mean 1, Eq. 1 as implemented) are read back.
Per class it prints the share of examples that are hard (``g > 0.5``), the share of the class's
weight R gives them, and their weight mass under R against plain CE (CE: their count).

    python benchmarks/diagnostics/ghm_r_weight_mass.py RUN_DIR [RUN_DIR ...] --output FILE.md
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import torch

from longtail.atomic import atomic_write_text
from longtail.config import load_config
from longtail.data.factory import load_dataset
from longtail.engine.runner import git_commit
from longtail.losses.ghm_cwap import GHMCWAPLoss
from longtail.models.factory import build_model


def hard_weight_mass(run_dir: str, hard_above: float = 0.5) -> list[dict]:
    cfg = load_config(f"{run_dir}/config.yaml")
    ds = load_dataset(cfg.data)
    model = build_model(cfg.model.encoder, ds.num_classes)
    model.load_state_dict(torch.load(f"{run_dir}/stage0_stage1.pt", map_location="cpu", weights_only=True)["model"])
    model.eval()
    x = torch.as_tensor(ds.train.x)
    x = (x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x).float().div(255)  # uint8 images, channels first
    x = (x - torch.tensor(ds.mean)[:, None, None]) / torch.tensor(ds.std)[:, None, None]
    y = torch.as_tensor(ds.train.y).long()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    loss = GHMCWAPLoss(ds.class_counts, regions="ura", inter=False)
    g = loss.gradient_norm(logits, y)
    w = loss.weights_of(logits, y)  # the whole training set as each class's histogram
    rows = []
    for c in range(ds.num_classes):
        m = y == c
        hard = g[m] > hard_above
        rows.append(dict(cls=c, n=int(m.sum()), hard_share=float(hard.float().mean()),
                         hard_weight_share=float(w[m][hard].sum() / w[m].sum()),
                         mass_r=float(w[m][hard].sum()), mass_ce=int(hard.sum()), max_w=float(w[m].max())))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="trained image run folders (e.g. the CE rows of the CPU table)")
    parser.add_argument("--head-classes", type=int, default=5, help="classes 0..K-1 counted as the head")
    parser.add_argument("--output", help="Markdown file to write (printed too)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    commit = git_commit()
    lines = [
        "# Where GHM-CWAP's R term puts each class's weight",
        "",
        "g = 1 - p_y of the trained model on every un-augmented training image; R's category weights",
        "(URA, 30 regions, alpha 0.9, class mean 1) from the loss itself on those counts; hard: g > 0.5.",
        "",
    ]
    for run in args.runs:
        rows = hard_weight_mass(run)
        k = args.head_classes
        head_r = sum(r["mass_r"] for r in rows[:k]) / sum(r["mass_r"] for r in rows)
        head_ce = sum(r["mass_ce"] for r in rows[:k]) / sum(r["mass_ce"] for r in rows)
        lines += [f"## {run}", "", "| class | n_c | hard share of items | hard share of R's weight | hard mass under R | under CE | max W |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['cls']} | {r['n']} | {r['hard_share']:.3f} | {r['hard_weight_share']:.3f} | {r['mass_r']:.1f} | "
                  f"{r['mass_ce']} | {r['max_w']:.1f} |" for r in rows]
        lines += ["", f"Share of all hard-example weight held by classes 0-{k - 1}: R {head_r:.3f}, CE {head_ce:.3f}.", ""]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines.append(f"Command: `python {' '.join(sys.argv)}` — commit {commit}, device cpu ({platform.machine()}), "
                 f"{time.time() - start:.0f} s, {stamp}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
