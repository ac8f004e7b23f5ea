#!/usr/bin/env python3
"""Independent NumPy forward of Qwen3-MoE and DeepSeek-V2 checkpoints.

Written from the models' definitions (the Hugging Face modeling code's math:
qwen3_moe/modeling_qwen3_moe.py, DeepSeek's modeling_deepseek.py), not from
epserve's C code: it shares nothing with epserve but the checkpoint files. It
reads config.json and the safetensors files (header parsed with json, data
with numpy.frombuffer; F32, F16, BF16, and F8_E4M3 weights with their
`_scale_inv` block scales when config.json has an fp8 quantization_config:
value = e4m3 decoded from its bit fields times the scale of its
weight_block_size block, as DeepSeek's fp8_cast_bf16 does before its cast),
with YaRN rope scaling for both families (Qwen3: transformers'
_compute_yarn_parameters as documented; DeepSeek-V2: its own modeling
code), computes the logits of one token
sequence at positions 0..n-1 in float64 with the models' own routing (top-k of
the softmax, "baseline" in epserve's terms) and, given epserve's logits file
(`epserve logits --out F.bin`: [n, vocab] float32 little-endian), compares:

    error = max over rows r of  max_v |a[r, v] - b[r, v]| / max_v |b[r, v]|

with a = epserve, b = this reference (row-wise, so every position counts,
not only the one with the largest logits). Exit 0 when error <= --tol.

Usage: ref_forward.py --checkpoint DIR --tokens 1,2,3 [--logits F.bin]
                      [--tol 1e-3] [--save ref.bin]
"""

import argparse
import json
import math
import os
import sys

import numpy as np


# ---- safetensors ----------------------------------------------------------


def read_safetensors(path, names=None):
    """name -> float64 array for every tensor of one file (or those in names)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: {len(blob)} bytes, too short for a safetensors header")
    n = int.from_bytes(blob[:8], "little")
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(blob)} bytes)")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        begin, end = info["data_offsets"]
        raw = blob[base + begin:base + end]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        elif dt == "BF16":
            # bfloat16 is the high half of a float32.
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F8_E4M3":
            a = E4M3[np.frombuffer(raw, dtype=np.uint8)]
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {dt} not supported here "
                             "(F32, F16, BF16, F8_E4M3)")
        shape = info["shape"]
        if a.size != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name}: {a.size} values for shape {shape}")
        out[name] = a.astype(np.float64).reshape(shape)
    return out


def e4m3_table():
    """float e4m3 (OCP "fn": bias 7, no Inf, S.1111.111 NaN) of each byte."""
    t = np.empty(256)
    for v in range(256):
        sign = -1.0 if v & 0x80 else 1.0
        e, m = (v >> 3) & 15, v & 7
        if e == 15 and m == 7:
            t[v] = np.nan
        elif e == 0:
            t[v] = sign * m * 2.0 ** -9
        else:
            t[v] = sign * (1 + m / 8) * 2.0 ** (e - 7)
    return t


E4M3 = e4m3_table()


def read_checkpoint(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        w.update(read_safetensors(os.path.join(d, fn)))
    with open(os.path.join(d, "config.json")) as f:
        q = json.load(f).get("quantization_config")
    scales = [n for n in w if n.endswith("_scale_inv")]
    if not scales:
        return w
    if not q or q.get("quant_method") != "fp8":
        raise ValueError(f"{d}: block scales present but no fp8 quantization_config")
    br, bc = q["weight_block_size"]
    for sn in scales:
        name = sn[:-len("_scale_inv")]
        codes, s = w[name], w.pop(sn)
        r, c = codes.shape
        full = np.repeat(np.repeat(s, br, axis=0), bc, axis=1)[:r, :c]
        # fp32 product, as the dequantizers compute it.
        w[name] = (codes.astype(np.float32) * full.astype(np.float32)).astype(np.float64)
    return w


# ---- building blocks -------------------------------------------------------


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def mlp(x, gate, up, down):
    """down(silu(gate(x)) * up(x)); weights are [out, in]."""
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def causal_attention(q, k, v, scale):
    """q [h, n, d], k [h, n, d], v [h, n, dv] -> [n, h*dv]."""
    n = q.shape[1]
    s = np.einsum("hid,hjd->hij", q, k) * scale
    s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
    o = np.einsum("hij,hjd->hid", softmax(s), v)
    return o.transpose(1, 0, 2).reshape(n, -1)


class Margins:
    """Smallest gap seen between the last kept and the first dropped score:
    if routing ever disagrees with epserve's fp32 router, this shows why."""

    def __init__(self):
        self.min_gap = math.inf

    def see(self, kept_last, dropped_first):
        self.min_gap = min(self.min_gap, kept_last - dropped_first)


def top_k(scores, k, margins):
    idx = np.argsort(-scores, kind="stable")
    if k < len(scores):
        margins.see(scores[idx[k - 1]], scores[idx[k]])
    return idx[:k]


# ---- rotary tables -----------------------------------------------------------


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_dim(rotations, dim, base, max_pos):
    """The dimension whose wavelength turns `rotations` times over max_pos positions."""
    return dim * math.log(max_pos / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(base, d, factor, low, high):
    """YaRN's blend: dims below `low` keep theta^(-2i/d) (extrapolation), dims
    above `high` are divided by factor (interpolation), a linear ramp between."""
    freq_extra = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    freq_inter = freq_extra / factor
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extra_mask = 1.0 - ramp  # 1: keep the original frequency (high frequencies)
    return freq_inter * (1 - extra_mask) + freq_extra * extra_mask


def qwen3_rope_params(cfg, d):
    """inv_freq [d/2] and the factor on cos/sin of Qwen3's rotary embedding.

    Without rope_scaling: default RoPE, factor 1. With rope_scaling of
    rope_type (or type) "yarn": transformers' YaRN as its documentation of
    _compute_yarn_parameters describes the keys: `factor`; the correction
    range from `beta_fast` / `beta_slow` (read with `or`: missing, null or 0
    give 32 / 1) over `original_max_position_embeddings`, floored / ceiled
    unless `truncate` is false; `attention_factor` when given, else
    mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are
    given and non-zero, else 0.1 ln(factor) + 1.
    """
    base = cfg["rope_theta"]
    rs = cfg.get("rope_scaling")
    if not rs:
        return 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d), 1.0
    kind = rs.get("rope_type", rs.get("type"))
    if kind != "yarn":
        raise ValueError(f"rope_scaling type {kind!r} not handled here")
    factor = rs["factor"]
    orig = rs.get("original_max_position_embeddings", cfg["max_position_embeddings"])
    low = yarn_correction_dim(rs.get("beta_fast") or 32, d, base, orig)
    high = yarn_correction_dim(rs.get("beta_slow") or 1, d, base, orig)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    att = rs.get("attention_factor")
    if att is None:
        ms, msa = rs.get("mscale"), rs.get("mscale_all_dim")
        if ms and msa:
            att = yarn_get_mscale(factor, ms) / yarn_get_mscale(factor, msa)
        else:
            att = yarn_get_mscale(factor, 1)
    return yarn_inv_freq(base, d, factor, low, high), att


def deepseek_rope_params(cfg, d):
    """inv_freq [d/2] and the factor on cos/sin of DeepseekV2(Yarn)RotaryEmbedding
    (modeling_deepseek.py: beta_fast 32, beta_slow 1, mscale 1, mscale_all_dim 0
    when absent; the range always floored / ceiled)."""
    base = cfg["rope_theta"]
    rs = cfg.get("rope_scaling") or {}
    if not rs:
        return 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d), 1.0
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise ValueError(f"rope_scaling type {kind!r} not handled here")
    factor = rs["factor"]
    orig = rs["original_max_position_embeddings"]
    low = max(math.floor(yarn_correction_dim(rs.get("beta_fast", 32), d, base, orig)), 0)
    high = min(math.ceil(yarn_correction_dim(rs.get("beta_slow", 1), d, base, orig)), d - 1)
    att = yarn_get_mscale(factor, rs.get("mscale", 1)) / yarn_get_mscale(
        factor, rs.get("mscale_all_dim", 0))
    return yarn_inv_freq(base, d, factor, low, high), att


# ---- Qwen3-MoE ---------------------------------------------------------------


def qwen3_forward(cfg, w, tokens, margins):
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", H // nh)
    eps = cfg["rms_norm_eps"]
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    # cos/sin of cat(freqs, freqs), times YaRN's attention factor.
    inv_freq, att = qwen3_rope_params(cfg, hd)
    emb = np.concatenate([np.outer(pos, inv_freq)] * 2, axis=-1)  # [n, hd]
    cos, sin = np.cos(emb) * att, np.sin(emb) * att
    sparse_step = cfg.get("decoder_sparse_step", 1)
    dense_layers = set(cfg.get("mlp_only_layers", []) or [])

    x = w["model.embed_tokens.weight"][tokens]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2)
        kk = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in w:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            kk = rms_norm(kk, w[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + rotate_half(q) * sin
        kk = kk * cos + rotate_half(kk) * sin
        rep = nh // nkv  # GQA: query head i reads kv head i // rep
        kk, v = np.repeat(kk, rep, axis=0), np.repeat(v, rep, axis=0)
        o = causal_attention(q, kk, v, hd ** -0.5)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T

        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        if l in dense_layers or E == 0 or (l + 1) % sparse_step != 0:
            y = mlp(h, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"],
                    w[p + "mlp.down_proj.weight"])
        else:
            probs = softmax(h @ w[p + "mlp.gate.weight"].T)  # [n, E]
            y = np.zeros_like(h)
            for t in range(n):
                sel = top_k(probs[t], k, margins)
                wt = probs[t, sel]
                if cfg.get("norm_topk_prob", False):
                    wt = wt / wt.sum()
                for e, we in zip(sel, wt):
                    pe = p + f"mlp.experts.{e}."
                    y[t] += we * mlp(h[t], w[pe + "gate_proj.weight"], w[pe + "up_proj.weight"],
                                     w[pe + "down_proj.weight"])
        x = x + y
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


# ---- DeepSeek-V2 -------------------------------------------------------------


def deepseek_rope(cfg, d, n):
    """cos, sin [n, d] of DeepseekV2(Yarn)RotaryEmbedding for positions 0..n-1."""
    inv_freq, att = deepseek_rope_params(cfg, d)
    emb = np.concatenate([np.outer(np.arange(n, dtype=np.float64), inv_freq)] * 2, axis=-1)
    return np.cos(emb) * att, np.sin(emb) * att


def deinterleave(x):
    """HF's view(d/2, 2).transpose: pairs (2i, 2i+1) -> halves (i, i + d/2)."""
    d = x.shape[-1]
    return x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(x.shape)


def deepseek_gate(cfg, scores, margins):
    """Indices and weights of the kept experts of one token (MoEGate)."""
    k = cfg["num_experts_per_tok"]
    method = cfg.get("topk_method", "greedy")
    if method == "group_limited_greedy":
        ng, tg = cfg["n_group"], cfg["topk_group"]
        group_scores = scores.reshape(ng, -1).max(axis=-1)
        groups = top_k(group_scores, tg, margins)
        mask = np.zeros(ng, dtype=bool)
        mask[groups] = True
        scores = np.where(np.repeat(mask, len(scores) // ng), scores, 0.0)
    elif method not in ("greedy", "gready"):
        raise ValueError(f"topk_method {method!r} not handled here")
    sel = top_k(scores, k, margins)
    wt = scores[sel]
    if k > 1 and cfg.get("norm_topk_prob", False):
        wt = wt / (wt.sum() + 1e-20)
    else:
        wt = wt * cfg.get("routed_scaling_factor", 1.0)
    return sel, wt


def deepseek_forward(cfg, w, tokens, margins):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    eps = cfg["rms_norm_eps"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    lora = cfg["kv_lora_rank"]
    qlora = cfg.get("q_lora_rank") or 0
    n = len(tokens)
    cos, sin = deepseek_rope(cfg, rope, n)
    scale = (nope + rope) ** -0.5
    rs = cfg.get("rope_scaling") or {}
    if rs.get("mscale_all_dim"):
        m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
        scale *= m * m

    x = w["model.embed_tokens.weight"][tokens]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        if qlora:
            q = rms_norm(h @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], eps)
            q = q @ w[a + "q_b_proj.weight"].T
        else:
            q = h @ w[a + "q_proj.weight"].T
        q = q.reshape(n, nh, nope + rope).transpose(1, 0, 2)
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        ckv = h @ w[a + "kv_a_proj_with_mqa.weight"].T
        latent, k_pe = ckv[:, :lora], ckv[:, lora:]
        kv = rms_norm(latent, w[a + "kv_a_layernorm.weight"], eps) @ w[a + "kv_b_proj.weight"].T
        kv = kv.reshape(n, nh, nope + vd).transpose(1, 0, 2)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q_pe = deinterleave(q_pe)
        k_pe = deinterleave(k_pe)[None]  # one rope key shared by every head
        q_pe = q_pe * cos + rotate_half(q_pe) * sin
        k_pe = k_pe * cos + rotate_half(k_pe) * sin
        qs = np.concatenate([q_nope, q_pe], axis=-1)
        ks = np.concatenate([k_nope, np.broadcast_to(k_pe, (nh, n, rope))], axis=-1)
        o = causal_attention(qs, ks, v, scale)
        x = x + o @ w[a + "o_proj.weight"].T

        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        E = cfg.get("n_routed_experts") or 0
        if E == 0 or l < cfg.get("first_k_dense_replace", 0) or l % cfg.get("moe_layer_freq", 1):
            y = mlp(h, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"],
                    w[p + "mlp.down_proj.weight"])
        else:
            scores = softmax(h @ w[p + "mlp.gate.weight"].T)
            y = np.zeros_like(h)
            for t in range(n):
                sel, wt = deepseek_gate(cfg, scores[t], margins)
                for e, we in zip(sel, wt):
                    pe = p + f"mlp.experts.{e}."
                    y[t] += we * mlp(h[t], w[pe + "gate_proj.weight"], w[pe + "up_proj.weight"],
                                     w[pe + "down_proj.weight"])
            if cfg.get("n_shared_experts"):
                ps = p + "mlp.shared_experts."
                y += mlp(h, w[ps + "gate_proj.weight"], w[ps + "up_proj.weight"],
                         w[ps + "down_proj.weight"])
        x = x + y
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


# ---- main ----------------------------------------------------------------------


def max_rel_err(a, b):
    """Row-wise max|a-b| / max|b|, the max over rows (b is the reference)."""
    num = np.max(np.abs(a - b), axis=1)
    den = np.maximum(np.max(np.abs(b), axis=1), 1e-6)
    return float(np.max(num / den))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="directory with config.json")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--logits", help="epserve's [n, vocab] float32 little-endian logits")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--save", help="write this reference's logits, same layout")
    args = ap.parse_args()

    with open(os.path.join(args.checkpoint, "config.json")) as f:
        cfg = json.load(f)
    tokens = [int(t) for t in args.tokens.split(",")]
    vocab = cfg["vocab_size"]
    if any(t < 0 or t >= vocab for t in tokens):
        print(f"ref_forward: token ids must be in 0..{vocab - 1}", file=sys.stderr)
        return 2
    w = read_checkpoint(args.checkpoint)
    margins = Margins()
    mt = cfg.get("model_type")
    if mt == "qwen3_moe":
        ref = qwen3_forward(cfg, w, tokens, margins)
    elif mt == "deepseek_v2":
        ref = deepseek_forward(cfg, w, tokens, margins)
    else:
        print(f"ref_forward: {args.checkpoint}/config.json: model_type {mt!r}, expected "
              "qwen3_moe or deepseek_v2", file=sys.stderr)
        return 2
    if args.save:
        ref.astype("<f4").tofile(args.save)
    if not args.logits:
        return 0
    got = np.fromfile(args.logits, dtype="<f4").astype(np.float64)
    if got.size != len(tokens) * vocab:
        print(f"ref_forward: {args.logits}: {got.size} floats, expected {len(tokens)} x {vocab}",
              file=sys.stderr)
        return 1
    err = max_rel_err(got.reshape(len(tokens), vocab), ref)
    ok = err <= args.tol
    print(f"{mt} {len(tokens)} tokens: max relative error {err:.3g} (row-wise max|a-b|/max|b|), "
          f"tol {args.tol:g}, smallest routing margin {margins.min_gap:.3g}: "
          f"{'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
