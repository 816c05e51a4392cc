#!/usr/bin/env bash
# One GPU session for the training benchmark, from the repository root on a CUDA machine:
#   1. bench_train.py (stock stack against sftgate's levers, random Qwen3-4B-shaped model);
#   2. `sftgate train`'s library entry point with its defaults on the sample project, using the
#      random checkpoint the benchmark saved (its tokenizer is tiny-qwen3's), to show the
#      product picks the measured settings by itself.
# Wheels in .whl/ (bitsandbytes, liger-kernel, trl and what sftgate needs that the machine
# lacks) are installed to /tmp/site first when the folder is there. Results go to $OUT.
set -euo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/{bitsandbytes,liger_kernel,trl,datasets,dill,multiprocess}-*.whl \
    .whl/{pydantic,pydantic_core,annotated_types,typing_inspection,typing_extensions}-*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"

python3 benchmarks/bench_train.py --out "$OUT" --budget-s "${BUDGET_S:-330}" \
  --plan "${PLAN:-levers}" --steps "${STEPS:-8}" 2>&1 |
  grep -v -e "Loading weights" -e FutureWarning -e "warnings.warn" | tee "$OUT/bench.log"

python3 - <<'EOF' 2>&1 | grep -v -e "Loading weights" -e FutureWarning | tee "$OUT/e2e.log"
import json, os, time
from sftgate.config import load_config
from sftgate.train import TrainConfig, train

overrides = {
    "model": "/tmp/sftgate-bench-qwen3-4b-random",
    "out": "/tmp/sftgate-e2e-adapter",
    "params.max_steps": 30,
    "params.max_length": 2048,  # tiny-qwen3's byte tokenizer: 3 tokens per CJK character
}
cfg = load_config(TrainConfig, "examples/train_tiny.yaml", overrides)
result = train(cfg, progress=False)
m = result.metadata
keep = ["machinery", "wall_time_s", "total_time_s", "tokens_per_s", "peak_memory_gib",
        "probe_peak_memory_gib", "examples", "examples_shortened", "quantization", "model_revision"]
summary = {k: m[k] for k in keep} | {"loss_first_last": [m["loss_per_step"][0], m["loss_per_step"][-1]],
                                    "s_per_step": round(m["wall_time_s"] / len(m["loss_per_step"]), 4),
                                    "files": sorted(os.listdir(result.adapter_dir))}
print(json.dumps(summary, indent=2))
json.dump(summary, open(os.path.join(os.environ.get("OUT", "bench-out"), "e2e.json"), "w"), indent=2)
EOF
