#!/usr/bin/env bash
# On the GPU machine: benchmarks/gpu_check.py with what tools/gpu_kit.sh carried (see there).
#   bash tools/gpu_run.sh [PARTS [ARGS...]]   PARTS: comma-separated, default every part; ARGS go to gpu_check.py
# Each call copies the loads it carries (.gpu/a, .gpu/b) to /tmp/gpu-kit, installs the wheels once
# into /tmp/gpu-kit/site, and, once both halves of the GGUF are there and match their checksum,
# hands the model to the check with --model-file. Results go to $OUT (else benchmarks/).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT:-/tmp/gpu-kit}
LOADS=${GPU_LOADS:-.gpu}
mkdir -p "$KIT"
for load in "$LOADS"/a "$LOADS"/b; do
  if [ -d "$load" ]; then cp -r "$load"/. "$KIT"/; fi
done
if compgen -G "$KIT/wheels/*.whl" > /dev/null && [ ! -f "$KIT/site/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$KIT/site" \
    "$KIT"/wheels/*.whl && touch "$KIT/site/.installed"
fi
if [ -d "$KIT/site" ]; then export PYTHONPATH="$KIT/site${PYTHONPATH:+:$PYTHONPATH}"; fi
MODEL=()
if [ -f "$KIT/smollm2.part1" ] && [ -f "$KIT/smollm2.part2" ]; then
  name=$(awk '{print $2}' "$KIT/smollm2.sha256")
  [ -f "$KIT/$name" ] || cat "$KIT/smollm2.part1" "$KIT/smollm2.part2" > "$KIT/$name"
  if (cd "$KIT" && sha256sum -c --quiet smollm2.sha256); then
    MODEL=(--model-file "$KIT/$name")
    echo "gpu_run: SmolLM2 assembled from the carried halves, checksum ok: $KIT/$name" >&2
  else
    echo "gpu_run: the carried GGUF does not match its checksum; the model parts fall back to random weights" >&2
    rm -f "$KIT/$name"
  fi
fi
export PYTHONUNBUFFERED=1 INTERP_PROGRESS=0
python3 benchmarks/gpu_check.py --parts "${1:-cuda_tests,attention,trace,needle,sae}" "${MODEL[@]}" \
  --out-dir "${OUT:-benchmarks}" "${@:2}"
