#!/usr/bin/env python3
"""Reads block_bench.py's interleaved rounds back (its JSON files) and asks how much of a reading
is the switch between variants rather than the variant.

block_bench --interleave runs the rows in order in even rounds and in reverse in odd ones, so with
the rows plain, mhc, mhc_recompute the plain block follows itself in even rounds (after the
first: the odd round before ended with it) and follows mhc in odd ones, and mhc (in the middle)
follows plain in even rounds and mhc_recompute -- under torch.compile the same graph as mhc's --
in odd ones. Per file and width (compiled rows) it prints:

  all      the overhead of mhc over all rounds (summed times; the pairs' reading)
  plain    the plain block's mean time after itself / after mhc
  late     the overhead over the second half of the rounds only
  steady   mhc's odd rounds over plain's even rounds, second half: each variant after (the
           equivalent of) itself, as a training run has it -- an estimate; `--round-warmup`
           measures it directly, and did better: one block at C = 4096 on an H100 read +7.40%
           with 25 warm-up steps where this estimate of a one-warm-up run said +9.16%
           (session29.log)

    python3 bench/round_bias.py bench/results/stack4-*.json bench/results/block1-*.json
"""
import argparse
import json
import statistics
import sys

ORDER = ["plain", "mhc", "mhc_recompute"]


def bias(plain, mhc):
    """The readings above from two rows' ms_rounds (equal lengths, >= 4 rounds)."""
    n = len(plain)
    late = range(n // 2, n)
    late_even = [i for i in late if i % 2 == 0]
    late_odd = [i for i in late if i % 2 == 1]
    return {
        "all_pct": 100 * (sum(mhc) / sum(plain) - 1),
        "plain_after_itself_ms": statistics.mean(plain[i] for i in range(2, n, 2)),
        "plain_after_mhc_ms": statistics.mean(plain[i] for i in range(1, n, 2)),
        "late_pct": 100 * (sum(mhc[i] for i in late) / sum(plain[i] for i in late) - 1),
        "steady_pct": 100 * (statistics.mean(mhc[i] for i in late_odd) /
                             statistics.mean(plain[i] for i in late_even) - 1),
    }


def readings(result):
    """[(C, blocks, bias)] of one block_bench JSON: its compiled widths whose rows are exactly
    plain, mhc, mhc_recompute with interleaved rounds (other row sets put mhc elsewhere in the
    order, where the reading above does not hold)."""
    out = []
    for C in sorted({r.get("C") for r in result.get("rows", [])}):
        rows = [r for r in result["rows"]
                if r.get("C") == C and r.get("mode") == "compile" and r.get("ms_rounds")]
        if [r["variant"] for r in rows] != ORDER:
            continue
        plain, mhc = rows[0]["ms_rounds"], rows[1]["ms_rounds"]
        if len(plain) != len(mhc) or len(plain) < 4:
            continue
        out.append((C, result.get("blocks", 1), bias(plain, mhc)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="block_bench.py JSON files")
    args = p.parse_args(argv)
    print(f"{'file':52} {'C':>5} {'blocks':>6} {'all %':>6} {'plain after itself / mhc':>25}"
          f" {'late %':>6} {'steady %':>8}")
    found = 0
    for path in args.files:
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: not read ({e})", file=sys.stderr)
            continue
        for C, blocks, b in readings(result):
            found += 1
            print(f"{path[-52:]:52} {C:>5} {blocks:>6} {b['all_pct']:6.2f} "
                  f"{b['plain_after_itself_ms']:12.2f} / {b['plain_after_mhc_ms']:8.2f}"
                  f" {b['late_pct']:8.2f} {b['steady_pct']:8.2f}")
    if not found:
        print("no interleaved compiled plain/mhc/mhc_recompute rounds in these files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
