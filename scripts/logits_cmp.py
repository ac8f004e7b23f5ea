#!/usr/bin/env python3
"""Two `epserve logits --out` files of the same tokens compared row by row.

A file is [rows, vocab] float32 little-endian, one row per position. The
check the device path is held to (issue 20; docs/cuda.md): the greedy
argmax equal at every position where the reference's best two logits are
more than 2 x BUDGET of its row's largest apart (closer is a near-tie that
BF16 rounding may break either way, as tests/cuda/test_cuda_forward.c
allows; such positions are counted and named), and the relative error
(row-wise max|a - b| / max|b|, the worst row) within the budget; b is the
reference.

    logits_cmp.py A B ROWS BUDGET [LABEL]

prints one line, "LABEL: max rel err E (budget BUDGET), argmax equal at N/ROWS
positions ok|FAIL", and exits 1 on FAIL (2 on a bad file). scripts/emu.sh
and scripts/gpu-check.sh run it; rows() and rel_err() are for their other
checks. Standard library only (no numpy on a bare GPU machine).
"""
import array
import sys


def rows(path, n):
    """The n rows of a logits file, as lists of floats."""
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    v = len(a) // n if n > 0 else 0
    if n <= 0 or v == 0 or v * n != len(a):
        raise ValueError(f"{path}: {len(a)} floats, expected {n} rows of the same width")
    return [a[i * v:(i + 1) * v] for i in range(n)]


def rel_err(a_rows, b_rows):
    """max over rows of max|a - b| / max|b| (b the reference)."""
    return max(max(abs(x - y) for x, y in zip(a, b)) / max(max(abs(y) for y in b), 1e-30)
               for a, b in zip(a_rows, b_rows))


def argmax(r):
    """The first index of the largest value (ties: the lowest id, as greedy picks)."""
    best = 0
    for i, x in enumerate(r):
        if x > r[best]:
            best = i
    return best


def main(argv):
    if len(argv) not in (5, 6):
        print(__doc__.strip().split("\n\n")[2], file=sys.stderr)
        return 2
    path_a, path_b, n, budget = argv[1], argv[2], int(argv[3]), float(argv[4])
    label = argv[5] if len(argv) == 6 else f"{path_a} vs {path_b}"
    try:
        a, b = rows(path_a, n), rows(path_b, n)
    except (OSError, ValueError) as e:
        print(f"{label}: {e}", file=sys.stderr)
        return 2
    if len(a[0]) != len(b[0]):
        print(f"{label}: vocab {len(a[0])} vs {len(b[0])}", file=sys.stderr)
        return 2
    err = rel_err(a, b)
    same = [argmax(x) == argmax(y) for x, y in zip(a, b)]
    # A differing argmax is a near-tie when b's logit at a's argmax is within
    # 2 x budget x max|b| (of the row) of b's best.
    tie = [not s and (y[argmax(y)] - y[argmax(x)]) <= 2 * budget * max(abs(v) for v in y)
           for s, x, y in zip(same, a, b)]
    ok = err <= budget and all(s or t for s, t in zip(same, tie))
    diff = "" if all(same) else " (differs at " + ",".join(
        f"{i}{' near-tie' if tie[i] else ''}" for i, s in enumerate(same) if not s) + ")"
    print(f"{label}: max rel err {err:.4g} (budget {budget:g}), argmax equal at "
          f"{sum(same)}/{n} positions{diff} {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
