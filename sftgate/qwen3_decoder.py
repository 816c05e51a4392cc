"""A fused decoder for plain Qwen3 models: prefill and one-token decode steps over its own KV cache.

The static decoder (`sftgate.generate.static_generate_batch`) uses it for a `Qwen3ForCausalLM`
with plain linear layers (a base model or a merged adapter); other models keep transformers'
forward. It computes what transformers' Qwen3 forward computes, in the same order, with fewer and
cheaper kernels:
- q, k and v come from one matrix product, and so do gate and up (their weights concatenated once
  per batch: +q,k,v,gate,up weights of memory, 4.7 GB for Qwen3-4B);
- prefill runs on the prompts' tokens packed (no padding in the matrix products; attention on a
  padded copy of q, k and v, causal) and writes each row's keys and values into a left-aligned
  cache (row b's prompt ends at slot `width`, so every row's next token goes to the same slot, as
  with transformers' left padding);
- on CUDA in bf16, the elementwise work between matrix products is one Triton kernel each
  (`sftgate.decode_kernels`), and decode attention reads only the slots a row can see;
  elsewhere (the CPU, other dtypes) the same steps run as plain torch operations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def supported(model: Any) -> bool:
    """A Qwen3ForCausalLM whose projections are plain `nn.Linear` without bias, full attention."""
    import torch

    if type(model).__name__ != "Qwen3ForCausalLM":
        return False
    config = model.config
    if config.attention_bias or config.hidden_act != "silu":
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return False
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for linear in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(linear) is not torch.nn.Linear:
                return False
    return True


class Qwen3Decoder:
    """One batch's decoder: `prefill` the prompts, then `step` one token per row at a time."""

    def __init__(self, model: Any, batch: int, cache_len: int) -> None:
        import torch

        config = model.config
        self.model = model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        embed = model.model.embed_tokens.weight
        self.kernels = embed.is_cuda and embed.dtype == torch.bfloat16
        layers = model.model.layers
        self.qkv = [
            torch.cat(
                [la.self_attn.q_proj.weight, la.self_attn.k_proj.weight, la.self_attn.v_proj.weight]
            )
            for la in layers
        ]
        self.gate_up = [
            torch.cat([la.mlp.gate_proj.weight, la.mlp.up_proj.weight]) for la in layers
        ]
        # the kernels read only slots already written; torch's masked attention multiplies the
        # hidden slots by zero weights, so there they must hold finite values
        alloc = torch.empty if self.kernels else torch.zeros
        shape = (batch, self.kv_heads, cache_len, self.dim)
        self.caches = [
            (
                alloc(shape, dtype=embed.dtype, device=embed.device),
                alloc(shape, dtype=embed.dtype, device=embed.device),
            )
            for _ in layers
        ]
        self.rows = torch.arange(batch, device=embed.device)
        self.span = torch.arange(cache_len, device=embed.device)
        self.start = torch.zeros(batch, dtype=torch.long, device=embed.device)

    def prefill(self, prompts: Sequence[list[int]]) -> Any:
        """Run the prompts, fill the cache; returns each prompt's last-token logits.

        The matrix products run on the prompts' tokens packed (no padding); causal attention runs
        on zero-padded copies of q, k and v (torch's fused attention: cuDNN's on an H200, twice as
        fast there as flash attention over the packed tokens)."""
        import torch

        device, dtype = self.rows.device, self.model.model.embed_tokens.weight.dtype
        batch, width = len(prompts), max(len(p) for p in prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        flat = torch.tensor([t for p in prompts for t in p], device=device)
        row_of = torch.repeat_interleave(self.rows, lengths)
        offsets = lengths.cumsum(0) - lengths
        column = torch.arange(flat.numel(), device=device) - offsets[row_of]
        self.start.copy_(width - lengths)
        slots = self.start[row_of] + column
        index = row_of * width + column  # each token's row in the padded batch
        # zeros once: every layer writes the same (real) rows, the pads stay zero
        q_pad, k_pad, v_pad = (
            torch.zeros((batch * width, heads, self.dim), dtype=dtype, device=device)
            for heads in (self.heads, self.kv_heads, self.kv_heads)
        )

        def attend(q: Any, caches: tuple[Any, Any]) -> Any:
            def heads_first(t: Any) -> Any:
                return t.reshape(batch, width, -1, self.dim).transpose(1, 2)

            out = torch.nn.functional.scaled_dot_product_attention(
                heads_first(q),  # q_pad, filled by _qk_norm_rope_store
                heads_first(k_pad),
                heads_first(v_pad),
                is_causal=True,
                scale=self.dim**-0.5,
                enable_gqa=True,
            )
            return out.transpose(1, 2).reshape(batch * width, self.heads * self.dim)[index]

        x = self.model.model.embed_tokens(flat)
        cos, sin = self.model.model.rotary_emb(x, column[None, :])
        stream, pending = self._layers(
            x, cos[0], sin[0], row_of, slots, attend, (q_pad, k_pad, v_pad, index)
        )
        last = offsets + lengths - 1
        return self._logits(stream[last].contiguous(), pending[last].contiguous())

    def step(self, token: Any, position: Any, slot: Any) -> Any:
        """One token per row (`token`, `position`: (batch, 1)) written at cache `slot` ((1,))."""
        import torch

        x = self.model.model.embed_tokens(token[:, 0])
        cos, sin = self.model.model.rotary_emb(x, position)
        scale = self.dim**-0.5
        batch = x.shape[0]

        def attend(q: Any, caches: tuple[Any, Any]) -> Any:
            if self.kernels:
                from sftgate.decode_kernels import decode_attention

                return decode_attention(q, caches, self.start, slot, scale)
            visible = (self.span >= self.start[:, None]) & (self.span <= slot)
            out = torch.nn.functional.scaled_dot_product_attention(
                q.reshape(batch, self.kv_heads, -1, self.dim),
                *caches,
                attn_mask=visible[:, None, None, :],
                scale=scale,
            )
            return out.reshape(batch, self.heads * self.dim)

        stream, pending = self._layers(
            x, cos.reshape(batch, -1), sin.reshape(batch, -1), self.rows, slot, attend, None
        )
        return self._logits(stream, pending)

    def _logits(self, stream: Any, pending: Any) -> Any:
        import torch

        hidden = self._add_rmsnorm(stream, pending, self.model.model.norm.weight)
        return torch.nn.functional.linear(hidden, self.model.lm_head.weight)

    def _layers(
        self,
        x: Any,
        cos: Any,
        sin: Any,
        rows: Any,
        slots: Any,
        attend: Callable[[Any, tuple[Any, Any]], Any],
        padded: tuple[Any, Any, Any, Any] | None,
    ) -> tuple[Any, Any]:
        """Every decoder layer over tokens x (T, hidden); returns the residual stream and the last
        MLP output still to be added to it (the final norm adds it, as the next layer would).
        Keys and values go to cache row rows[t], slot slots[t] (prefill) or to one shared slot
        (a decode step: `slots` is (1,), `rows` every row)."""
        from torch.nn.functional import linear

        stream, pending = x.clone(), None
        weights = zip(self.model.model.layers, self.qkv, self.gate_up, self.caches)
        for layer, qkv_weight, gate_up_weight, caches in weights:
            a = layer.self_attn
            h = self._add_rmsnorm(stream, pending, layer.input_layernorm.weight)
            qkv = linear(h, qkv_weight)
            q = self._qk_norm_rope_store(qkv, a, cos, sin, caches, rows, slots, padded)
            attended = linear(attend(q, caches), a.o_proj.weight)
            h = self._add_rmsnorm(stream, attended, layer.post_attention_layernorm.weight)
            gate, up = linear(h, gate_up_weight).chunk(2, dim=1)
            pending = linear(self._silu_mul(gate, up), layer.mlp.down_proj.weight)
        return stream, pending

    # --- the elementwise stages: Triton kernels on CUDA in bf16, torch operations elsewhere ---

    def _add_rmsnorm(self, x: Any, residual: Any | None, weight: Any) -> Any:
        import torch

        if self.kernels:
            from sftgate.decode_kernels import add_rmsnorm

            return add_rmsnorm(x, residual, weight, self.eps)
        if residual is not None:
            x.copy_(x + residual)
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def _qk_norm_rope_store(
        self,
        qkv: Any,
        attn: Any,
        cos: Any,
        sin: Any,
        caches: tuple[Any, Any],
        rows: Any,
        slots: Any,
        padded: tuple[Any, Any, Any, Any] | None,
    ) -> Any:
        """q/k norms and rotary embedding; k and v into the caches. Returns q (decode) or the
        padded q buffer, with k and v in theirs (prefill)."""
        import torch

        norms = (attn.q_norm.weight, attn.k_norm.weight)
        if self.kernels:
            from sftgate.decode_kernels import qk_norm_rope_store

            return qk_norm_rope_store(qkv, norms, cos, sin, caches, rows, slots, self.eps, padded)
        tokens = qkv.shape[0]
        split = [self.heads, self.kv_heads, self.kv_heads]
        q, k, v = qkv.reshape(tokens, -1, self.dim).split(split, 1)
        q, k = self._add_rmsnorm(q, None, norms[0]), self._add_rmsnorm(k, None, norms[1])
        c, s = cos[:, None, :], sin[:, None, :]
        half = self.dim // 2
        q = q * c + torch.cat((-q[..., half:], q[..., :half]), -1) * s
        k = k * c + torch.cat((-k[..., half:], k[..., :half]), -1) * s
        kc, vc = caches
        if padded is None:  # a decode step: every row at the same slot
            kc.index_copy_(2, slots, k[:, :, None, :])
            vc.index_copy_(2, slots, v[:, :, None, :])
            return q
        kc[rows, :, slots] = k
        vc[rows, :, slots] = v
        for buffer, t in zip(padded, (q, k, v)):
            buffer.index_copy_(0, padded[3], t)
        return padded[0]

    def _silu_mul(self, gate: Any, up: Any) -> Any:
        import torch

        if self.kernels:
            from sftgate.decode_kernels import silu_mul

            return silu_mul(gate, up)
        return torch.nn.functional.silu(gate) * up
