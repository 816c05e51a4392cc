#!/usr/bin/env bash
# `sftgate search` end to end on a CUDA machine: the sample study (sftgate/sample/study.yaml)
# with a random-weight checkpoint in the Qwen3-4B shape (bench_round.py builds it; no weights
# are reachable on the lent GPU), steps / STEPS_DIV, the smoke bar at 0 so that a random model
# walks through rounds 0-2, decoding capped for speed, and EXECUTOR as the executor (default:
# three runs at once in child processes). Prints the CLI's output, the runs and the report;
# copies the report and registry to $OUT. From the repository root:
#   OUT=out bash benchmarks/search_gpu.sh
set -euo pipefail
OUT=${OUT:-search-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH="/tmp/site:$PWD"
fi
MODEL=/tmp/sftgate-search-model
(cd benchmarks && python3 -c "
from pathlib import Path
from bench_round import build_checkpoint
print(build_checkpoint(Path('$MODEL'), False, 'cuda'))")

python3 - <<EOF
import yaml
study = yaml.safe_load(open("sftgate/sample/study.yaml", encoding="utf-8"))
div = int("${STEPS_DIV:-5}")
study["name"] = "gpu-search-random-4b"
study["model"] = "$MODEL"
study["workdir"] = "/tmp/sftgate-search/work"
study["registry"] = "/tmp/sftgate-search/registry.sqlite"
study["note"] = f"Random-weight Qwen3-4B shape on one GPU, steps / {div}, smoke bar 0: a timing run, not a result."
study["executor"] = yaml.safe_load("${EXECUTOR:-{kind: local, parallel_runs: 3}}")
study["decode"].update(max_new_tokens=96, batch_size=34, merge_check_questions=2)
p = study["policy"]
p["thresholds"]["smoke_schema"] = 0.0
p["round0"]["max_steps"] //= div
for c in p["round1"]:
    c["max_steps"] //= div
p["round1_reasons"] = [
    f"{name}: lr {c['lr']:g}, {c['max_steps']} steps (seed / {div})"
    for name, c in zip(("base", "conservative", "stronger"), p["round1"])
]
p["steps_delta"] //= div
yaml.safe_dump(study, open("sftgate/sample/study_gpu_timing.yaml", "w", encoding="utf-8"), allow_unicode=True)
EOF
start=$(date +%s)
python3 -m sftgate search --config sftgate/sample/study_gpu_timing.yaml 2>&1 |
  grep -v -e "Loading weights" -e FutureWarning -e "warnings.warn" -e forward_call | tee "$OUT/search.log"
echo "search wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/search.log"
COLUMNS=200 python3 -m sftgate runs --registry /tmp/sftgate-search/registry.sqlite | tee "$OUT/runs.txt"
cp /tmp/sftgate-search/work/report.md /tmp/sftgate-search/registry.sqlite "$OUT/"
