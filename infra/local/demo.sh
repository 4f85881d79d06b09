#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded local stack, from raw data to a gated bundle.
#
#   1. infra/local/stack.sh up: Prefect server + process worker + MLflow server on 127.0.0.1 (${TTLORA_RUN_DIR:-.run}/)
#   2. DVC: init + default remote (idempotent; .dvc-remote/, or S3 with TTLORA_S3=1), then the six
#      default tasks' raw data from the mirror under DVC: dvc add, dvc repro prepare@<task>, dvc push
#   3. prefect deploy --name local (prefect.yaml: the four `local` deployments on the process pool)
#   4. prefect deployment run train-all-experts/local --param profile=demo --watch: one
#      train-expert/local flow run per task (2 at a time), then build-moe-bundle
#   5. the bundle's evaluation table and the UI URLs
#
# Settings (environment): TTLORA_DEMO_PROFILE (demo: the small budgets of params.yaml `demo:`),
# TTLORA_DEMO_TASKS (default: `tasks` of params.yaml; `all`: every card in data/tasks), TTLORA_DEMO_CONCURRENCY (2),
# TTLORA_DEMO_TIMEOUT (seconds the run may take, 3000), TTLORA_DATA_MIRROR (../shared/datasets), TTLORA_S3=1 (MLflow artifacts and the DVC remote in S3).
# `make down` stops the stack; re-running the demo retrains nothing whose data, params and code are unchanged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BIN=${TTLORA_VENV:-$ROOT/.venv}/bin
[[ -x $BIN/python ]] || { echo "demo: error: no virtualenv at ${BIN%/bin}; run \`make setup\`" >&2; exit 2; }
export PATH=$BIN:$PATH
export TTLORA_DATA_MIRROR=${TTLORA_DATA_MIRROR:-$(cd "$ROOT/.." && pwd)/shared/datasets}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
PROFILE=${TTLORA_DEMO_PROFILE:-demo}
CONCURRENCY=${TTLORA_DEMO_CONCURRENCY:-2}
TIMEOUT=${TTLORA_DEMO_TIMEOUT:-3000}
THREADS=$(( $(nproc) / CONCURRENCY )); (( THREADS > 0 )) || THREADS=1  # torch threads per expert: no oversubscription
t0=$SECONDS
say() { echo "demo [$((SECONDS - t0))s]: $*" >&2; }

[[ -d $TTLORA_DATA_MIRROR ]] || { echo "demo: error: data mirror $TTLORA_DATA_MIRROR does not exist (set TTLORA_DATA_MIRROR)" >&2; exit 2; }
if [[ ${TTLORA_DEMO_TASKS:-} == all ]]; then
    mapfile -t TASKS < <(python -c 'from ttlora_moe.data.cards import list_tasks; print("\n".join(list_tasks()))')
    # dvc.yaml prepares the tasks listed in params.yaml: list every card for this run only, and put
    # params.yaml and dvc.lock back at exit (the extra tasks' lock entries must not reach a commit)
    SAVED=$(mktemp -d)
    cp params.yaml "$SAVED/"; [[ ! -f dvc.lock ]] || cp dvc.lock "$SAVED/"
    trap 'cp "$SAVED"/* .; rm -rf "$SAVED"' EXIT
    python -c 'import sys; from ttlora_moe.pipeline.params_file import add_to_task_list as add
added = [t for t in sys.argv[1:] if add(t)]
print("demo: params.yaml `tasks` lists", " ".join(added) or "nothing new", "for this run (params.yaml and dvc.lock restored at exit)", file=sys.stderr)' "${TASKS[@]}"
elif [[ -n ${TTLORA_DEMO_TASKS:-} ]]; then
    read -r -a TASKS <<<"$TTLORA_DEMO_TASKS"
else
    mapfile -t TASKS < <(python -c 'from ttlora_moe.params import load_params; print("\n".join(load_params()["tasks"]))')
fi

say "starting the local stack"
bash infra/local/stack.sh up
# shellcheck disable=SC1091
source "${TTLORA_RUN_DIR:-.run}/env.sh"
export TTLORA_WORK_POOL=${TTLORA_WORK_POOL:-local-process}

say "data under DVC: ${TASKS[*]}"
python -m ttlora_moe.pipeline.dvc_tracking import "${TASKS[@]}"

say "deploying the flows (prefect.yaml) to pool $TTLORA_WORK_POOL"
prefect --no-prompt deploy --name local >"$TTLORA_RUN_DIR/logs/deploy.log" 2>&1 \
    || { tail -n 20 "$TTLORA_RUN_DIR/logs/deploy.log" >&2; echo "demo: error: prefect deploy failed (log: $TTLORA_RUN_DIR/logs/deploy.log)" >&2; exit 1; }
prefect deployment ls 2>/dev/null | grep -E "local" >&2 || true

tasks_json=$(python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${TASKS[@]}")
say "running train-all-experts/local (profile $PROFILE, $CONCURRENCY experts at a time); logs: $TTLORA_RUN_DIR/logs/prefect-worker.log"
status=0
prefect deployment run train-all-experts/local --param "profile=$PROFILE" --param "tasks=$tasks_json" \
    --param "concurrency=$CONCURRENCY" --param "threads_per_expert=$THREADS" \
    --watch --watch-timeout "$TIMEOUT" \
    | tee "$TTLORA_RUN_DIR/logs/demo-run.log" | grep -vE "^\s*$" | tail -n 5 >&2 || status=$?
say "train-all-experts finished (exit $status)"

echo
ttlora-moe bundle-show || status=$?
echo "Prefect UI: $PREFECT_UI_URL/runs"
echo "Stop:       make down"
say "done in $((SECONDS - t0))s"
exit "$status"
