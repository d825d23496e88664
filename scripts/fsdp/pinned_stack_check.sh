#!/usr/bin/env bash
# The FSDP addition on upstream OpenVLA-OFT's pinned stack, on the CPU (issue 24): a fresh venv with
# upstream's exact pins from PyPI (torch==2.2.0, torchvision==0.17.0, peft==0.11.1, timm==0.9.10,
# draccus==0.8.0, tokenizers==0.19.1) and its transformers fork built from source; then
#   1. the Python tests with that torch (scripts/tests: FSDP choice, the rank-0 wait outliving the
#      process group's timeout on 2 gloo ranks, ...);
#   2. scripts/fsdp/cpu_check.sh: upstream's real finetune() through scripts/finetune_fsdp.py (FSDP1,
#      which is what torch 2.2.0 runs) against DDP on a tiny random model, 2 ranks on gloo: first-step
#      gradients, losses, checkpoints (files, keys, shapes, dtypes), upstream's evaluation loader on
#      both checkpoints, --resume, gradient checkpointing, the validation clock; verify.py judges.
#
#   scripts/fsdp/pinned_stack_check.sh VENV OPENVLA_OFT_CHECKOUT TRANSFORMERS_FORK OUT
# e.g. (with network)
#   git clone https://github.com/moojink/openvla-oft /tmp/oft
#   git clone https://github.com/moojink/transformers-openvla-oft /tmp/tf-fork
#   scripts/fsdp/pinned_stack_check.sh /tmp/pin-venv /tmp/oft /tmp/tf-fork /tmp/pin-out
# VENV is created when it has no python (torch 2.2.0's wheel pulls the nvidia-* CUDA packages, about
# 2.5 GB; nothing here uses a GPU). Python 3.8-3.11 (torch 2.2.0 has no wheel for 3.12). About 15
# minutes on 2 cores after the downloads. Exits non-zero when any check fails.
set -u
VENV=$1; CHECKOUT=$2; FORK=$3; OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")
PY=${PYTHON:-python3}
PINS=(torch==2.2.0 torchvision==0.17.0 peft==0.11.1 timm==0.9.10 draccus==0.8.0 tokenizers==0.19.1
      # not pinned by upstream: the versions the earlier real-code runs used; numpy < 2 for torch 2.2.0
      accelerate==1.0.1 huggingface_hub==0.23.5 sentencepiece==0.1.99 'numpy<2' einops rich absl-py pytest)
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || exit 2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}" "$FORK" || exit 2
fi
"$VENV/bin/python" - <<'PY' | tee "$OUT/versions.txt" || exit 2
import sys, importlib.metadata as md, torch, torchvision, transformers, peft, timm, tokenizers, accelerate
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__} (fork), peft {peft.__version__}, timm {timm.__version__}, "
      f"draccus {md.version('draccus')}, tokenizers {tokenizers.__version__}, "
      f"accelerate {accelerate.__version__}")
assert torch.__version__.startswith("2.2.0"), f"expected upstream's torch 2.2.0, found {torch.__version__}"
PY
status=0
echo "== pytest (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
(cd "$ROOT" && PYTHONPATH="$ROOT/scripts" "$VENV/bin/python" -m pytest -q -p no:cacheprovider scripts/tests) \
  > "$OUT/pytest.log" 2>&1 || status=1
tail -1 "$OUT/pytest.log"
echo "== cpu_check.sh (FSDP1 against DDP, upstream's real code)"
bash "$HERE/cpu_check.sh" "$VENV/bin" "$CHECKOUT" "$OUT/cpu" | tee "$OUT/cpu_check.txt"
grep -q '^FAIL' "$OUT/cpu_check.txt" && status=1
grep -Eq '^([0-9]+)/\1 checks passed' "$OUT/cpu_check.txt" || status=1
exit $status
