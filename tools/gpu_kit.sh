#!/usr/bin/env bash
# Packs, into .gpu/ (git-ignored), what the GPU machine lacks for benchmarks/gpu_check.py, in two loads
# that each travel with one device call (64 MiB with the working tree). Run it here, after `make install`:
#
#   .gpu/a/wheels/*.whl    Python 3.12 wheels of the packages the GPU image lacks (--no-deps, pinned below)
#   .gpu/a/smollm2.part1   the first bytes of SmolLM2-135M-Instruct.Q4_1.gguf (94 MiB: too big for one call)
#   .gpu/b/smollm2.part2   the rest
#   .gpu/{a,b}/smollm2.sha256
#
# Then on the GPU machine, two device calls back to back (the machine stays warm 30 s between them):
#   run(command="bash tools/gpu_run.sh cuda_tests,attention", carry=[".gpu/a"])
#   run(command="bash tools/gpu_run.sh trace,needle,sae", carry=[".gpu/b"])
# tools/gpu_run.sh keeps what each call carried in /tmp/gpu-kit there; if the first call's load is gone,
# the model parts measure SmolLM2's shape with random weights and skip the needle test, and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((1024 * 1024))
# The packages benchmarks/gpu_check.py imports beyond the GPU image's (torch, triton, transformers,
# numpy, pandas, pytest, accelerate, jaxtyping, einops, safetensors, tokenizers, pyarrow, xxhash, ...):
# transformer_lens and sae_lens with the dependencies they import, and gguf to read the model. Tested
# with the image's transformers 5.17.0 in a venv holding only the image's packages.
WHEELS=(
  transformer-lens==3.9.0 beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 nltk==3.10.4
  sae-lens==6.54.12 simple-parsing==0.1.9 docstring_parser==0.18.0 tenacity==9.2.1 python-dotenv==1.2.4
  wandb==0.31.0 platformdirs==4.14.9 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 cwevals==0.0.1b1 googleapis-common-protos==1.76.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-http-transport==0.66b2
)
GGUF=$("$PYTHON" -c "from interp.model_registry import EMBEDDED; m = EMBEDDED['smollm2-135m']; print(m.locate(None))")
NAME=$(basename "$GGUF")

rm -rf .gpu && mkdir -p .gpu/a/wheels .gpu/b
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/a/wheels "${WHEELS[@]}"

size() { du -cb "$@" | tail -1 | cut -f1; }
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(size .gpu/a/wheels)
total=$(stat -c %s "$GGUF")
first=$((LIMIT - MARGIN - tree - wheels))
second=$((total - first))
if [ "$first" -le 0 ] || [ $((second + tree + MARGIN)) -gt "$LIMIT" ]; then
  echo "gpu_kit: the wheels ($wheels B), the tree ($tree B) and the model ($total B) do not fit two 64 MiB loads" >&2
  exit 2
fi
head -c "$first" "$GGUF" > .gpu/a/smollm2.part1
tail -c "$second" "$GGUF" > .gpu/b/smollm2.part2
(cd "$(dirname "$GGUF")" && sha256sum "$NAME") | tee .gpu/a/smollm2.sha256 > .gpu/b/smollm2.sha256
echo "gpu_kit: .gpu/a $(( $(size .gpu/a) / 1048576 )) MiB ($(ls .gpu/a/wheels | wc -l) wheels + part 1), .gpu/b $(( $(size .gpu/b) / 1048576 )) MiB, tree $((tree / 1048576)) MiB"
