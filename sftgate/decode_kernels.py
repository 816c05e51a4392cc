"""Triton kernels for the fused Qwen3 decoder (`sftgate.qwen3_decoder`), bf16 on CUDA only.

Each kernel fuses the elementwise work between two matrix products of a decoder layer, rounding
to bf16 wherever transformers' eager Qwen3 code does (so the same inputs give the same bf16 values
up to the order of a reduction's sums), and the decode attention reads only the cache slots a row
can see. Written by hand because nothing installed does this: transformers runs these stages as
~60 small kernels per layer, and PyTorch's attention over a static cache reads every slot through
a mask (on an H200 that was 8 of a step's 16.4 ms, `benchmarks/README.md`).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm(x_ptr, r_ptr, w_ptr, y_ptr, n, eps, HAS_R: tl.constexpr, BLOCK: tl.constexpr):
    """x += r (bf16, in place) when HAS_R; y = w * bf16(x * rsqrt(mean(x^2) + eps))."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
    if HAS_R:
        r = tl.load(r_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
        x = (x + r).to(tl.bfloat16).to(tl.float32)
        tl.store(x_ptr + row * n + cols, x.to(tl.bfloat16), mask=keep)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / n + eps)
    normed = (x * rstd).to(tl.bfloat16).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n + cols, (w * normed).to(tl.bfloat16), mask=keep)


def add_rmsnorm(x: Any, residual: Any | None, weight: Any, eps: float) -> Any:
    """(x + residual written back into x when given) then RMSNorm; x is (rows, n) contiguous."""
    rows, n = x.shape
    y = torch.empty_like(x)
    _add_rmsnorm[(rows,)](
        x,
        residual if residual is not None else x,
        weight,
        y,
        n,
        eps,
        HAS_R=residual is not None,
        BLOCK=triton.next_power_of_2(n),
        num_warps=8,
    )
    return y


@triton.jit
def _norm_rope(x1, x2, w_ptr, c1, c2, s1, s2, eps, D: tl.constexpr):
    """RMSNorm over each row of a head tile (halves x1, x2: [heads, D/2]), then rotary embedding."""
    lo = tl.arange(0, D // 2)
    w1 = tl.load(w_ptr + lo).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + D // 2 + lo).to(tl.float32)[None, :]
    rstd = (1.0 / tl.sqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D + eps))[:, None]
    y1 = (w1 * (x1 * rstd).to(tl.bfloat16).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
    y2 = (w2 * (x2 * rstd).to(tl.bfloat16).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
    # transformers: x * cos + rotate_half(x) * sin, each product and the sum rounded to bf16
    o1 = (y1 * c1).to(tl.bfloat16).to(tl.float32) + (-y2 * s1).to(tl.bfloat16).to(tl.float32)
    o2 = (y2 * c2).to(tl.bfloat16).to(tl.float32) + (y1 * s2).to(tl.bfloat16).to(tl.float32)
    return o1.to(tl.bfloat16), o2.to(tl.bfloat16)


@triton.jit
def _qk_norm_rope_store(
    qkv_ptr,
    qn_ptr,
    kn_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_out_ptr,
    v_out_ptr,
    out_row_ptr,
    kc_ptr,
    vc_ptr,
    row_ptr,
    slot_ptr,
    slot_stride,
    eps,
    s_cache_b,
    s_cache_h,
    H: tl.constexpr,
    KV: tl.constexpr,
    D: tl.constexpr,
    H_P: tl.constexpr,
    KV_P: tl.constexpr,
    PREFILL: tl.constexpr,
):
    """Token t of the fused q|k|v projection: q and k heads get RMSNorm over the head and rotary
    embedding, v heads are copied. q goes to q_out row t (decode) or row out_row[t] (PREFILL,
    where k and v go to k_out and v_out row out_row[t] too); k and v go to the cache at batch row
    row[t], slot slot[t * slot_stride]."""
    t = tl.program_id(0).to(tl.int64)
    o = tl.load(out_row_ptr + t).to(tl.int64) if PREFILL else t
    lo = tl.arange(0, D // 2)[None, :]
    c1 = tl.load(cos_ptr + t * D + lo).to(tl.float32)
    c2 = tl.load(cos_ptr + t * D + D // 2 + lo).to(tl.float32)
    s1 = tl.load(sin_ptr + t * D + lo).to(tl.float32)
    s2 = tl.load(sin_ptr + t * D + D // 2 + lo).to(tl.float32)
    src = qkv_ptr + t * (H + 2 * KV) * D
    hq = tl.arange(0, H_P)[:, None]
    hk = tl.arange(0, KV_P)[:, None]
    qm, km = hq < H, hk < KV
    q1 = tl.load(src + hq * D + lo, mask=qm, other=0.0).to(tl.float32)
    q2 = tl.load(src + hq * D + D // 2 + lo, mask=qm, other=0.0).to(tl.float32)
    o1, o2 = _norm_rope(q1, q2, qn_ptr, c1, c2, s1, s2, eps, D)
    tl.store(q_out_ptr + o * H * D + hq * D + lo, o1, mask=qm)
    tl.store(q_out_ptr + o * H * D + hq * D + D // 2 + lo, o2, mask=qm)
    k1 = tl.load(src + (H + hk) * D + lo, mask=km, other=0.0).to(tl.float32)
    k2 = tl.load(src + (H + hk) * D + D // 2 + lo, mask=km, other=0.0).to(tl.float32)
    o1, o2 = _norm_rope(k1, k2, kn_ptr, c1, c2, s1, s2, eps, D)
    v1 = tl.load(src + (H + KV + hk) * D + lo, mask=km, other=0.0)
    v2 = tl.load(src + (H + KV + hk) * D + D // 2 + lo, mask=km, other=0.0)
    if PREFILL:
        tl.store(k_out_ptr + o * KV * D + hk * D + lo, o1, mask=km)
        tl.store(k_out_ptr + o * KV * D + hk * D + D // 2 + lo, o2, mask=km)
        tl.store(v_out_ptr + o * KV * D + hk * D + lo, v1, mask=km)
        tl.store(v_out_ptr + o * KV * D + hk * D + D // 2 + lo, v2, mask=km)
    row = tl.load(row_ptr + t).to(tl.int64)
    slot = tl.load(slot_ptr + t * slot_stride).to(tl.int64)
    dst = row * s_cache_b + hk * s_cache_h + slot * D
    tl.store(kc_ptr + dst + lo, o1, mask=km)
    tl.store(kc_ptr + dst + D // 2 + lo, o2, mask=km)
    tl.store(vc_ptr + dst + lo, v1, mask=km)
    tl.store(vc_ptr + dst + D // 2 + lo, v2, mask=km)


def qk_norm_rope_store(
    qkv: Any,
    norms: tuple[Any, Any],
    cos: Any,
    sin: Any,
    caches: tuple[Any, Any],
    rows: Any,
    slots: Any,
    eps: float,
    padded: tuple[Any, Any, Any, Any] | None,
) -> Any:
    """qkv (T, (H+2KV)*D) -> q; k and v go into the caches (each (B, KV, S, D)) at batch row
    rows[t], slot slots[t] (or the one slot of a (1,) `slots`, shared by every token). Decode
    (`padded` None): returns q (T, H, D). Prefill: `padded` = (q, k, v, index) buffers of the
    padded batch and the padded row of each token; q, k and v are written there (returns q)."""
    kc, vc = caches
    tokens, (kv_heads, dim) = qkv.shape[0], kc.shape[1::2]
    heads = qkv.shape[1] // dim - 2 * kv_heads
    if padded is None:
        q = torch.empty((tokens, heads, dim), dtype=qkv.dtype, device=qkv.device)
        k, v, index = q, q, rows
    else:
        q, k, v, index = padded
    _qk_norm_rope_store[(tokens,)](
        qkv,
        *norms,
        cos,
        sin,
        q,
        k,
        v,
        index,
        kc,
        vc,
        rows,
        slots,
        0 if slots.numel() == 1 else 1,
        eps,
        kc.stride(0),
        kc.stride(1),
        H=heads,
        KV=kv_heads,
        D=dim,
        H_P=triton.next_power_of_2(heads),
        KV_P=triton.next_power_of_2(kv_heads),
        PREFILL=padded is not None,
        num_warps=4,
    )
    return q


@triton.jit
def _decode_attention(
    q_ptr,
    kc_ptr,
    vc_ptr,
    start_ptr,
    slot_ptr,
    out_ptr,
    scale,
    s_cache_b,
    s_cache_h,
    H: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One query token per row: the G query heads of one key/value head at once, over the cache
    slots start[b]..slot (inclusive), online softmax in fp32."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    lo = tl.load(start_ptr + b)
    hi = tl.load(slot_ptr) + 1
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, D)
    head = kvh * G + g
    q = tl.load(q_ptr + b * H * D + head[:, None] * D + d[None, :], mask=g[:, None] < G, other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    base = b * s_cache_b + kvh * s_cache_h
    for n in range(lo, hi, BLOCK_N):
        slots = n + tl.arange(0, BLOCK_N)
        seen = slots < hi
        k = tl.load(kc_ptr + base + slots[:, None] * D + d[None, :], mask=seen[:, None], other=0.0)
        v = tl.load(vc_ptr + base + slots[:, None] * D + d[None, :], mask=seen[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(seen[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        total = total * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v)
        m = m_new
    o = (acc / total[:, None]).to(tl.bfloat16)
    tl.store(out_ptr + b * H * D + head[:, None] * D + d[None, :], o, mask=g[:, None] < G)


def decode_attention(q: Any, caches: tuple[Any, Any], start: Any, slot: Any, scale: float) -> Any:
    """q (B, H, D) bf16 against the caches (B, KV, S, D) over slots start[b]..slot -> (B, H*D).
    One program per row and key/value head (splitting along the slots measured no faster on an
    H200, at 16 rows or 100)."""
    kc, vc = caches
    batch, heads, dim = q.shape
    kv_heads = kc.shape[1]
    out = torch.empty((batch, heads * dim), dtype=q.dtype, device=q.device)
    _decode_attention[(batch, kv_heads)](
        q,
        kc,
        vc,
        start,
        slot,
        out,
        scale,
        kc.stride(0),
        kc.stride(1),
        H=heads,
        G=heads // kv_heads,
        D=dim,
        BLOCK_G=max(16, triton.next_power_of_2(heads // kv_heads)),
        BLOCK_N=64,
        num_warps=4,
        num_stages=3,
    )
    return out


@triton.jit
def _silu_mul(g_ptr, u_ptr, y_ptr, n, stride, BLOCK: tl.constexpr):
    """y = bf16(silu(g)) * u for one row's BLOCK columns (g, u rows `stride` apart; y contiguous)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < n
    g = tl.load(g_ptr + row * stride + cols, mask=keep, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * stride + cols, mask=keep, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)
    tl.store(y_ptr + row * n + cols, (act * u).to(tl.bfloat16), mask=keep)


def silu_mul(gate: Any, up: Any) -> Any:
    """gate, up: (rows, n) with unit column stride and the same row stride (views of one
    gate|up product allowed)."""
    rows, n = gate.shape
    y = torch.empty((rows, n), dtype=gate.dtype, device=gate.device)
    _silu_mul[(rows, triton.cdiv(n, 1024))](gate, up, y, n, gate.stride(0), BLOCK=1024, num_warps=4)
    return y
