#!/usr/bin/env python3
"""PNG plots of a stability_study.py run (needs matplotlib; without it, says so and writes nothing).

    python3 examples/plot_stability.py out/stability.json --out docs/stability

writes <out>/loss.png (train and validation loss per variant), <out>/gains.png (single-layer and
composite forward/backward Amax gain per layer at the last evaluation, log scale) and
<out>/composite_over_training.png (the largest composite forward gain at each evaluation).
"""

import argparse
import json
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_stability: matplotlib is not installed; no plots written")
        return 0
    with open(args.json) as fh:
        run = json.load(fh)
    os.makedirs(args.out, exist_ok=True)
    variants = run["variants"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in variants.items():
        ax.plot([t["step"] for t in r["train"]], [t["loss"] for t in r["train"]], label=f"{name} train")
        ax.plot([e["step"] for e in r["eval"]], [e["val_loss"] for e in r["eval"]], "o--",
                label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title(f"byte LM on Python stdlib, {run['config']['layers']} blocks, C={run['config']['C']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, kind in zip(axes, ("forward", "backward")):
        for name, r in variants.items():
            g = r["eval"][-1]["gains"] if r["eval"] else None
            if not g:
                continue
            layers = range(len(g[f"single_{kind}"]))
            ax.plot(layers, g[f"single_{kind}"], label=f"{name} single layer")
            ax.plot(layers, g[f"composite_{kind}"], "--", label=f"{name} composite")
        ax.set_yscale("log")
        ax.set_xlabel("hyper-connection (layer) index")
        ax.set_title(f"Amax {kind} gain (last evaluation)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "gains.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in variants.items():
        pts = [(e["step"], max(e["gains"]["composite_forward"])) for e in r["eval"] if e.get("gains")]
        if pts:
            ax.plot(*zip(*pts), "o-", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("max composite forward gain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "composite_over_training.png"), dpi=120)
    print(f"wrote {args.out}/loss.png, gains.png, composite_over_training.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
