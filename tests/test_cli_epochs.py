"""`num_epochs` in `sftgate train`: one of max_steps and num_epochs, converted to max_steps from
the examples that fit and the examples per step, recorded in sftgate_train.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftgate.artifacts import read_adapter_metadata
from sftgate.cli import main
from sftgate.config import load_config
from sftgate.errors import InputError
from sftgate.params import TrainParams
from sftgate.train import TrainConfig, steps_from_epochs
from tests.conftest import PROMPT_PATH, make_question, write_json
from tests.test_train import CTX


def train_yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(
        f"kind: train\nmodel: tiny-qwen3\nquestions: {tmp_path / 'q.json'}\n"
        f"prompt: {PROMPT_PATH}\nout: {tmp_path / 'adapter'}\n{body}",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    "num_epochs, examples, params, steps",
    [
        (1, 5, {"batch_size": 2}, 3),  # the last step reaches into the next pass
        (0.1, 30, {}, 3),  # 3.0000000000000004 steps is 3
        (2, 10, {"batch_size": 2, "grad_accum_steps": 2}, 5),
        (0.01, 4, {}, 1),  # at least one step
    ],
)
def test_epochs_to_steps(num_epochs, examples, params, steps):
    config = TrainConfig(
        questions="q.json", out="o", num_epochs=num_epochs, params=TrainParams(**params)
    )
    converted, record = steps_from_epochs(config, examples)
    assert converted.params.max_steps == steps
    assert converted.params.model_dump() == {**config.params.model_dump(), "max_steps": steps}
    per_step = config.params.batch_size * config.params.grad_accum_steps
    assert record == {
        "num_epochs": num_epochs,
        "examples": examples,
        "examples_per_step": per_step,
        "max_steps": steps,
    }
    plain = TrainConfig(questions="q.json", out="o", params=TrainParams(max_steps=7))
    assert steps_from_epochs(plain, examples) == (plain, None)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "num_epochs: 2\nparams:\n  max_steps: 10\n",
            "give either params.max_steps or num_epochs, not both (got max_steps=10 and num_epochs=2)",
        ),
        ("num_epochs: 0\n", "num_epochs: must be > 0.0, got 0"),
    ],
)
def test_one_of_max_steps_and_num_epochs(tmp_path, body, message):
    with pytest.raises(InputError) as e:
        load_config(TrainConfig, train_yaml(tmp_path, body))
    assert message in str(e.value).replace("field '", "").replace("'", "")
    # max_steps at its default is not "given": num_epochs alone is fine, checkpoints checked later
    cfg = load_config(TrainConfig, train_yaml(tmp_path, "num_epochs: 3\ncheckpoint_steps: [50]\n"))
    assert cfg.num_epochs == 3


def test_the_flag_and_the_file_give_one_of_them(tmp_path, capsys):
    path = train_yaml(tmp_path, "params:\n  max_steps: 10\n")
    assert main(["train", "--config", str(path), "--num-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "give either params.max_steps or num_epochs, not both" in err
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_num_epochs_trains_its_steps_and_records_the_conversion(tmp_path, capsys):
    items = [make_question(f"q{i}", question=f"第 {i} 題：VPN？", contexts=CTX) for i in range(2)]
    items.append(make_question("q-long", question="很長的問題" * 400, contexts=CTX))
    write_json(tmp_path / "q.json", {"index_version": "test-idx", "questions": items})
    path = train_yaml(
        tmp_path, "checkpoint_steps: [2]\nparams:\n  max_length: 4096\n  lora_dropout: 0.0\n"
    )
    with pytest.warns(UserWarning, match="1 of 3 examples left out"):
        code = main(["train", "--config", str(path), "--num-epochs", "1.5"])
    assert code == 0, capsys.readouterr().err
    assert "3 steps (1.5 epochs x 2 examples / 1 per step)" in capsys.readouterr().out
    m = read_adapter_metadata(tmp_path / "adapter")
    # 1.5 passes over the 2 examples that fit (q-long is left out), one example per step
    assert m["steps_from_epochs"] == {
        "num_epochs": 1.5,
        "examples": 2,
        "examples_per_step": 1,
        "max_steps": 3,
    }
    assert m["train_params"]["max_steps"] == 3 and len(m["loss_per_step"]) == 3
    assert m["checkpoints"] == [2]
    # a checkpoint beyond the converted max_steps is refused, naming both numbers
    path = train_yaml(tmp_path, "checkpoint_steps: [3]\nparams:\n  max_length: 4096\n")
    path.write_text(path.read_text().replace(str(tmp_path / "adapter"), str(tmp_path / "b")))
    with pytest.warns(UserWarning):
        assert main(["train", "--config", str(path), "--num-epochs", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "num_epochs=1.5 over 2 examples is max_steps=3, but checkpoint_steps has [3]" in err
    assert not (tmp_path / "b").exists()
