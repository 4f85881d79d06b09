#!/usr/bin/env bash
# `make screenshots`: headless Chromium captures of what `make demo` produced, for the README:
#   docs/images/mlflow-model-version.png   the MLflow model-version page of ttlora-moe (tags pin the
#                                           experts; gates; aliases)
#   docs/images/prefect-flow-run.png       the Prefect flow-run graph of the latest train-all-experts run
# Needs the stack of `make demo` running (.run/env.sh). Installs Debian's chromium if it is missing.
# Settings: TTLORA_SCREENSHOT_DIR (docs/images), TTLORA_SCREENSHOT_WAIT_MS (20000: virtual time for the UIs' JavaScript).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BIN=${TTLORA_VENV:-$ROOT/.venv}/bin
OUT=${TTLORA_SCREENSHOT_DIR:-$ROOT/docs/images}
WAIT_MS=${TTLORA_SCREENSHOT_WAIT_MS:-20000}
RUN=${TTLORA_RUN_DIR:-$ROOT/.run}
die() { echo "screenshots: error: $1" >&2; exit "${2:-1}"; }

[[ -f $RUN/env.sh ]] || die "no $RUN/env.sh: start the stack and run the pipeline first (\`make demo\`)" 2
# shellcheck disable=SC1091
source "$RUN/env.sh"
if ! command -v chromium >/dev/null; then
    echo "screenshots: installing Debian's chromium" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 \
        || die "could not install chromium (apt-get install -y chromium)"
fi
mkdir -p "$OUT"

# The pages: the latest ttlora-moe version, and the latest train-all-experts flow run.
read -r VERSION FLOW_RUN < <("$BIN/python" - <<'PY'
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

from ttlora_moe.pipeline.models import BUNDLE_MODEL, latest_version

version = latest_version(BUNDLE_MODEL) or ""
with get_client(sync_client=True) as client:
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-all-experts"])),
                                 sort=FlowRunSort.START_TIME_DESC, limit=1)
print(version or "-", runs[0].id if runs else "-")
PY
)
[[ $VERSION != - ]] || die "no ttlora-moe version is registered in $MLFLOW_TRACKING_URI; run \`make demo\` first"
[[ $FLOW_RUN != - ]] || die "no train-all-experts flow run in $PREFECT_API_URL; run \`make demo\` first"

shoot() {  # shoot URL FILE
    local profile
    profile=$(mktemp -d)
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile" --window-size=1400,1000 \
        --virtual-time-budget="$WAIT_MS" --screenshot="$2" "$1" >/dev/null 2>&1 || true
    rm -rf "$profile"
    [[ -s $2 ]] || die "chromium wrote no screenshot of $1"
    echo "$2  <-  $1"
}

shoot "$MLFLOW_TRACKING_URI/#/models/ttlora-moe/versions/$VERSION" "$OUT/mlflow-model-version.png"
shoot "$PREFECT_UI_URL/runs/flow-run/$FLOW_RUN" "$OUT/prefect-flow-run.png"
