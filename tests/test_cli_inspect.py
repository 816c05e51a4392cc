"""`sftgate prompt`, `sftgate ask` and `sftgate export RUN` on a real study: a tiny project searched
for one round with tiny-qwen3 on the CPU.

The search's own training loop and decoder are wrapped by spies that record what they are given
and call the real functions (nothing is replaced), so `prompt` is compared with the token ids
training and evaluation actually fed the model, and `ask` with the evaluation's own output."""

from __future__ import annotations

import json
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import sftgate.evaluate
import sftgate.train
from sftgate.artifacts import ADAPTER_METADATA, read_adapter_metadata
from sftgate.ask import check_output
from sftgate.cli import main
from sftgate.export import EXPORT_METADATA
from sftgate.fsutil import current_umask
from sftgate.generate import greedy_generate
from sftgate.models import eos_token_ids, load_model, load_tokenizer
from sftgate.questions import Passage, load_questions
from sftgate.search import search
from sftgate.search.registry import Registry
from tests.test_search import make_project


@dataclass
class Searched:
    root: Path
    config: Path
    registry: Path
    run_id: str
    adapter: Path
    gate_dir: Path
    trained: dict[str, tuple[list[int], int]] = field(default_factory=dict)  # id -> ids, prompt_len
    evaluated: list[list[int]] = field(default_factory=list)  # the gate prompts, in order


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Any:
    """Round 0 of a tiny study (4 steps at a high lr, so the adapter changes the outputs; the
    smoke rule stops the study after it), with spies on the training loop's examples and the
    decoder's prompts."""
    root = tmp_path_factory.mktemp("project")
    config = make_project(
        root,
        allow_unreachable=True,
        thresholds={"smoke_schema": 0.9},  # the smoke run writes no JSON: stop there
        round0={"max_steps": 4, "max_length": 1024, "lr": 3e-2, "lora_dropout": 0.0},
    )
    seen_train: list[Any] = []
    seen_eval: list[list[list[int]]] = []
    real_loop, real_generate = sftgate.train.train_loop, sftgate.evaluate.greedy_generate

    def loop_spy(setup, examples, p, **kw):
        seen_train.extend(examples)
        return real_loop(setup, examples, p, **kw)

    def generate_spy(model, tokenizer, prompts, **kw):
        seen_eval.append([list(p) for p in prompts])
        return real_generate(model, tokenizer, prompts, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFTGATE_HOME", str(root / "home"))
        mp.setattr(sftgate.train, "train_loop", loop_spy)
        mp.setattr(sftgate.evaluate, "greedy_generate", generate_spy)
        result = search(config, progress=False)
        reg = Registry(root / "registry.sqlite")
        [run] = reg.runs(result.study.id)
        reg.close()
        assert run.state.value == "done" and run.adapter_path and run.gate_dir
        [gate_prompts] = seen_eval  # one gate evaluation, no merge check
        yield Searched(
            root,
            config,
            root / "registry.sqlite",
            run.id,
            Path(run.adapter_path),
            Path(run.gate_dir),
            {e.id: (e.input_ids, e.prompt_len) for e in seen_train},
            gate_prompts,
        )


def cli_json(capsys, argv: list[str]) -> dict[str, Any]:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# ---------------------------------------------------------------------------------- prompt


@pytest.mark.slow
def test_prompt_is_what_training_and_evaluation_fed_the_model(searched, capsys):
    tokenizer = load_tokenizer("tiny-qwen3")
    for qid, (input_ids, prompt_len) in searched.trained.items():
        r = cli_json(
            capsys, ["prompt", "--config", str(searched.config), "--question", qid, "--json"]
        )
        assert r["split"] == "train" and r["max_length"] == 1024
        assert r["prompt_token_ids"] == input_ids[:prompt_len]
        assert r["completion_token_ids"] == input_ids[prompt_len:]
        assert r["prompt_tokens"] == prompt_len
        # the text printed is the text tokenised, byte for byte
        assert (
            tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] == input_ids[:prompt_len]
        )
        assert r["completion"].endswith("<|im_end|>")
    gate = load_questions(searched.root / "gate.json")
    assert len(searched.evaluated) == len(gate)
    for q, fed in zip(gate, searched.evaluated):
        r = cli_json(
            capsys, ["prompt", "--config", str(searched.config), "--question", q.id, "--json"]
        )
        assert (r["split"], r["in_sets"], r["completion"]) == ("gate", ["gate"], None)
        assert r["prompt_token_ids"] == fed
        assert tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] == fed
        # the plain form prints the same text between its marker lines
        assert main(["prompt", "--config", str(searched.config), "--question", q.id]) == 0
        out = capsys.readouterr().out
        assert f"--- prompt: {len(fed)} tokens ---\n{r['prompt']}--- end ---\n" in out


@pytest.mark.slow
def test_prompt_names_what_is_wrong(searched, capsys):
    assert main(["prompt", "--config", str(searched.config), "--question", "nope"]) == 2
    assert "item nope: field '--question': no question with this id" in capsys.readouterr().err
    argv = ["prompt", "--config", str(searched.config), "--question", "t0", "--set", "gate"]
    assert main(argv) == 2
    assert "no question with this id in the gate set (it is in: train)" in capsys.readouterr().err
    assert main([*argv[:-1], "train", "--max-length", "70"]) == 2
    assert "does not fit in max_length=70 tokens even without passages" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- ask


@pytest.mark.slow
def test_ask_answers_as_the_evaluation_did(searched, capsys):
    """The gate question's text asked with the run's adapter: the study's passages, prompt and
    merged decoding give the evaluation's own output, token for token."""
    predictions = [
        json.loads(line)
        for line in (searched.gate_dir / "predictions.jsonl").read_text().splitlines()
    ]
    gate = load_questions(searched.root / "gate.json").by_id
    contexts = {
        row["id"]: row["passages"]
        for row in map(
            json.loads, (searched.root / "work/contexts_gate.jsonl").read_text().splitlines()[1:]
        )
    }
    for pred in predictions[:2]:
        question = gate[pred["id"]].question
        a = cli_json(
            capsys,
            [
                "ask",
                "--config",
                str(searched.config),
                "--adapter",
                str(searched.adapter),
                "--json",
                question,
            ],
        )
        assert [(p["source_path"], p["text"]) for p in a["passages"]] == [
            (p["source_path"], p["text"]) for p in contexts[pred["id"]]
        ]
        assert (a["output"], a["prompt_tokens"], a["completion_tokens"]) == (
            pred["output"],
            pred["prompt_tokens"],
            pred["completion_tokens"],
        )
        assert a["merged"] and a["model_id"] == "tiny-qwen3"  # the adapter's base
        assert a["adapter_id"] == read_adapter_metadata(searched.adapter)["adapter_id"]
        assert a["schema_ok"] is False and a["parse_error"]  # a tiny model writes no JSON
    assert (
        main(
            ["ask", "--config", str(searched.config), "--adapter", str(searched.adapter), question]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"--- raw output: {pred['completion_tokens']} tokens" in out
    assert f"\n{pred['output']}\n--- end ---\nschema: FAIL: " in out


def test_check_output_is_the_scorers_check():
    passages = [Passage(source_path="it/vpn.md#申請", text="員工須填寫 IT-07 遠端存取申請表。")]
    good = {
        "answer": "填寫 IT-07。",
        "detailed_description": "填寫 IT-07 遠端存取申請表。",
        "original_evidence": ["填寫 IT-07 遠端存取申請表", "not in the passages"],
        "anchors": [
            {"source_path": "it/vpn.md#申請", "text": "IT-07"},
            {"source_path": "it/other.md", "text": "IT-07"},  # right text, wrong passage
        ],
    }
    c = check_output(json.dumps(good, ensure_ascii=False), passages)
    assert c == {
        "parsed": good,
        "parse_error": None,
        "schema_errors": [],
        "evidence_verbatim": [True, False],
        "anchors_grounded": [True, False],
    }
    c = check_output("```json\n{}\n```", passages)
    assert c["parsed"] is None and c["parse_error"] == "wrapped in a code fence"
    c = check_output(json.dumps({"answer": "x"}), passages)
    assert "(root): 'detailed_description' is a required property" in c["schema_errors"]


@pytest.mark.slow
def test_ask_names_what_is_missing_or_mismatched(searched, capsys):
    assert main(["ask", "VPN?"]) == 2
    assert "pass --config STUDY.yaml" in capsys.readouterr().err
    # the study's index with the shipped prompt: not the prompt the adapter was trained with
    argv = ["ask", "--index", str(searched.root / "work/index"), "--adapter", str(searched.adapter)]
    assert main([*argv, "VPN?"]) == 2
    assert "prompt_sha256: adapter has" in capsys.readouterr().err
    more = ["--prompt", str(searched.root / "prompt.md"), "--top-k", "1", "--max-new-tokens", "4"]
    assert main([*argv, *more, "--json", "VPN?"]) == 0
    assert json.loads(capsys.readouterr().out)["index_version"]


def study_with(searched: Searched, name: str, **decode: Any) -> Path:
    """The searched study's YAML with other decode settings, beside it (same index and work)."""
    import yaml

    study = yaml.safe_load(searched.config.read_text(encoding="utf-8"))
    study["decode"] |= decode
    path = searched.root / name
    path.write_text(yaml.safe_dump(study, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow
def test_ask_decodes_with_the_studys_engine(searched, capsys, monkeypatch):
    """The study's decode.engine reaches the decoder (a spy that calls the real one), --engine
    overrides it, and the answer names the engine that wrote it."""
    import sftgate.ask

    engines: list[str] = []
    real = sftgate.ask.greedy_generate

    def spy(*args, **kw):
        engines.append(kw["engine"])
        return real(*args, **kw)

    monkeypatch.setattr(sftgate.ask, "greedy_generate", spy)
    hf = study_with(searched, "study_hf.yaml", engine="hf")
    argv = ["ask", "--config", str(hf), "--adapter", str(searched.adapter), "--json", "VPN?"]
    assert cli_json(capsys, argv)["engine"] == "hf" and engines == ["hf"]
    assert cli_json(capsys, [*argv, "--engine", "static"])["engine"] == "static"
    assert engines == ["hf", "static"]
    argv[2] = str(searched.config)  # the study without decode.engine: static, its default
    assert cli_json(capsys, argv)["engine"] == "static" and engines[-1] == "static"
    assert main(argv[:-2] + ["VPN?"]) == 0
    assert "; engine static; index " in capsys.readouterr().out


@pytest.mark.slow
def test_ask_with_a_vllm_study_decodes_as_its_evaluation_would(searched, capsys):
    """engine vllm: an unmerged adapter is refused before any model loads, as `sftgate eval`
    refuses it; merged, the adapter goes to vLLM (which this machine lacks: the error says so)."""
    import importlib.util

    vllm = study_with(searched, "study_vllm.yaml", engine="vllm")
    argv = ["ask", "--config", str(vllm), "--adapter", str(searched.adapter), "VPN?"]
    assert main([*argv, "--no-merge"]) == 2
    assert "it cannot use an unmerged adapter" in capsys.readouterr().err
    unmerged = study_with(searched, "study_vllm_unmerged.yaml", engine="vllm", merge=False)
    assert main(["ask", "--config", str(unmerged), *argv[3:]]) == 2
    assert "it cannot use an unmerged adapter" in capsys.readouterr().err
    # --engine static decodes the vllm study's question in process
    assert cli_json(capsys, [*argv, "--engine", "static", "--json"])["engine"] == "static"
    if importlib.util.find_spec("vllm") is None:
        assert main(argv) == 1
        assert "--engine vllm needs vLLM" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- export


def greedy(model: Any, tokenizer: Any, prompts: list[list[int]], n: int = 24) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for gens in greedy_generate(
        model,
        tokenizer,
        prompts,
        batch_size=1,
        max_new_tokens=n,
        eos_ids=eos_token_ids(tokenizer, model),
    ):
        out.update({g.index: g.token_ids for g in gens})
    return [out[i] for i in range(len(prompts))]


@pytest.mark.slow
def test_export_merged_loads_back_and_decodes_like_the_adapter(searched, capsys, tmp_path):
    """float32: the merged folder decodes like the adapter on its base, token for token. bf16
    (the default): the same merge rounded to bf16, tensor for tensor. (On tiny-qwen3's random
    weights bf16 rounding alone changes greedy outputs, the base model's too: its logits are
    nearly flat, so the bf16 folder is compared with the exact merge, not decoded.)"""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = ["--registry", str(searched.registry)]
    exact, out = tmp_path / "merged-fp32", tmp_path / "merged"
    assert (
        main(["export", searched.run_id, "--merged", str(exact), "--dtype", "float32", *registry])
        == 0
    )
    assert main(["export", searched.run_id, "--merged", str(out), *registry]) == 0
    assert (
        f"run {searched.run_id}: merged into tiny-qwen3 as bfloat16 -> {out}"
        in capsys.readouterr().out
    )
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    # safetensors' own 0600 undone: a server may run as another user
    assert [f.name for f in out.iterdir() if not ordinary_mode(f)] == []
    assert not list(tmp_path.glob("*.partial-*"))
    record = json.loads((out / EXPORT_METADATA).read_text())
    assert (record["kind"], record["run_id"], record["dtype"], record["merged_in"]) == (
        "merged",
        searched.run_id,
        "bfloat16",
        "float32",
    )
    assert record["adapter_id"] == read_adapter_metadata(searched.adapter)["adapter_id"]

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        tokenizer("VPN 帳號")["input_ids"] == load_tokenizer("tiny-qwen3")("VPN 帳號")["input_ids"]
    )
    adapted = PeftModel.from_pretrained(
        load_model("tiny-qwen3").model, str(searched.adapter)
    ).eval()
    prompts = searched.evaluated  # the gate prompts the search decoded
    expected = greedy(adapted, tokenizer, prompts)
    with adapted.disable_adapter():
        assert greedy(adapted, tokenizer, prompts) != expected  # the adapter changes the outputs
    merged = AutoModelForCausalLM.from_pretrained(exact)  # a plain transformers model folder
    assert merged.dtype == torch.float32
    assert greedy(merged, tokenizer, prompts) == expected
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    rounded = load_file(out / "model.safetensors")
    full = load_file(exact / "model.safetensors")
    assert rounded.keys() == full.keys()
    for name, tensor in full.items():
        assert rounded[name].dtype == torch.bfloat16
        assert torch.equal(rounded[name], tensor.to(torch.bfloat16)), name
    assert main(["export", searched.run_id, "--merged", str(out), *registry]) == 2
    assert "merged: field 'out': exists" in capsys.readouterr().err  # refused, not overwritten


@pytest.mark.slow
def test_export_adapter_copies_a_folder_vllm_loads(searched, capsys, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    argv = ["export", searched.run_id, "--adapter", str(out), "--registry", str(searched.registry)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "vLLM's LoRA loader conditions hold for --max-lora-rank 16" in capsys.readouterr().out
    source = {f.name for f in searched.adapter.iterdir() if f.is_file()}
    assert {f.name for f in out.iterdir()} == source | {EXPORT_METADATA}
    for name in source:
        assert (out / name).read_bytes() == (searched.adapter / name).read_bytes()
    assert json.loads((out / EXPORT_METADATA).read_text())["vllm"] == {"max_lora_rank": 16}
    assert [f.name for f in out.iterdir() if not ordinary_mode(f)] == []
    loaded = PeftModel.from_pretrained(load_model("tiny-qwen3").model, str(out))
    assert sum("lora_B" in n for n, _ in loaded.named_parameters()) == 14
    # an adapter folder is accepted as RUN too
    assert main(["export", str(searched.adapter), "--adapter", str(tmp_path / "again")]) == 0


def ordinary_mode(path: Path) -> bool:
    """The mode open() gives a new file (0644 under umask 022)."""
    return stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()


def edited_adapter(searched: Searched, tmp_path: Path, **changes: Any) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(searched.adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"modules_to_save": ["lm_head"]},
            [
                "field 'modules_to_save': ['lm_head']: vLLM only loads adapters whose modules_to_save is null"
            ],
        ),
        ({"use_dora": True}, ["field 'use_dora': True: vLLM does not support DoRA"]),
        (
            {"r": 32},
            [
                "field 'r': rank 32 is above max_lora_rank 16 (start vLLM with --max-lora-rank 32 and export with --max-lora-rank 32)"
            ],
        ),
        ({"r": 1024}, ["vLLM's largest max_lora_rank is 512"]),
        (
            {"rank_pattern": {"q_proj": 64}},
            ["field 'rank_pattern': rank 64 is above max_lora_rank 16"],
        ),
        ({"bias": "all"}, ["field 'bias': 'all': vLLM does not support adapter biases"]),
        (
            {"init_lora_weights": "pissa"},
            ["field 'init_lora_weights': 'pissa' changes the base model's weights"],
        ),
        (
            {
                "target_modules": [
                    "model.layers.0.self_attn.q_proj",
                    "lm_head",
                    "model.embed_tokens",
                ]
            },
            [
                "field 'target_modules': lm_head, model.embed_tokens: vLLM takes LoRA only on the attention and MLP projections"
            ],
        ),
        ({"use_dora": True, "r": 64}, ["field 'use_dora'", "field 'r': rank 64"]),
    ],
)
def test_export_adapter_refuses_what_vllm_refuses(searched, capsys, tmp_path, changes, expected):
    folder = edited_adapter(searched, tmp_path, **changes)
    assert main(["export", str(folder), "--adapter", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == len(expected)
    for line, message in zip(err.strip().splitlines(), expected):
        assert f"{folder / 'adapter_config.json'}: " in line and message in line, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_rank_within_the_stated_maximum(searched, capsys, tmp_path):
    folder = edited_adapter(searched, tmp_path, r=32)
    assert (
        main(["export", str(folder), "--adapter", str(tmp_path / "a"), "--max-lora-rank", "32"])
        == 0
    )
    assert "conditions hold for --max-lora-rank 32" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # vLLM takes only its listed values
        main(["export", str(folder), "--adapter", str(tmp_path / "b"), "--max-lora-rank", "24"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["RUN"], "field '--merged': say what to export from RUN"),
        (["RUN", "extra", "--merged", "x"], "takes one argument (a run id or an adapter folder)"),
        (["mlflow"], "`export mlflow` needs the study"),
        (
            ["tensorboard", "s", "--merged", "x"],
            "`export tensorboard` writes a study into the tracker",
        ),
        (
            ["no-such-run", "--merged", "x"],
            "item no-such-run: field 'run': no such run, and no adapter folder",
        ),
        (["RUN", "--adapter", "x", "--step", "3"], "has no checkpoint at step 3 (it has: none)"),
        (["ADAPTER_PARENT", "--adapter", "x"], "is not a finished sftgate adapter"),
    ],
)
def test_export_usage_errors_are_one_line(searched, capsys, tmp_path, argv, message):
    swap = {"RUN": searched.run_id, "ADAPTER_PARENT": str(searched.adapter.parent)}
    argv = [swap.get(a, a) for a in argv]
    message = message.replace("RUN", searched.run_id)
    assert main(["export", *argv, "--registry", str(searched.registry)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists() and not Path("x").exists()
    assert (searched.adapter / ADAPTER_METADATA).exists()
