#!/usr/bin/env python3
"""The rotary tables of a config.json, computed independently of epserve.

Uses ref_forward.py's qwen3_rope_params / deepseek_rope_params (written from
transformers' documentation of _compute_yarn_parameters and from DeepSeek's
modeling code, in float64) and prints one JSON object:

    {"dim": d, "interleaved": bool, "attention_factor": a,
     "inv_freq": [d/2], "positions": [n],
     "cos": [n][d/2], "sin": [n][d/2]}    # cos(p * inv_freq_i) * a, sin(...) * a

Usage: rope_ref.py --config config.json --positions 0,1,32768
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_forward import deepseek_rope_params, qwen3_rope_params  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a config.json")
    ap.add_argument("--positions", required=True, help="comma-separated positions")
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    mt = cfg.get("model_type")
    if mt == "qwen3_moe":
        d = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
        inv_freq, att = qwen3_rope_params(cfg, d)
    elif mt == "deepseek_v2":
        d = cfg["qk_rope_head_dim"]
        inv_freq, att = deepseek_rope_params(cfg, d)
    else:
        print(f"rope_ref: {args.config}: model_type {mt!r}, expected qwen3_moe or deepseek_v2",
              file=sys.stderr)
        return 2
    pos = np.array([int(p) for p in args.positions.split(",")], dtype=np.float64)
    ang = np.outer(pos, inv_freq)
    print(json.dumps({
        "dim": d,
        "interleaved": mt == "deepseek_v2",
        "attention_factor": att,
        "inv_freq": inv_freq.tolist(),
        "positions": pos.astype(int).tolist(),
        "cos": (np.cos(ang) * att).tolist(),
        "sin": (np.sin(ang) * att).tolist(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
