#!/usr/bin/env bash
# `make demo-add-task`: register a 7th task from a CSV file whose columns the project has never seen,
# on the stack of `make demo`, then train its expert and a new bundle version. The six existing
# expert versions are not retrained (their MLflow versions stay as they were; the script checks).
#
# The CSV is built from the mirror's BoolQ training file with renamed columns and string labels:
#   query, context, verdict (yes/no)  ->  task `yesno` (a pair task: query + context)
# The task is committed to the side branch demo/<task> (TTLORA_ADD_TASK_BRANCH), not to the checked-out
# one; like every registration it is pushed when the repository has a remote `origin`.
# Settings: TTLORA_ADD_TASK (yesno), TTLORA_ADD_TASK_ROWS (3000), TTLORA_DEMO_PROFILE (demo),
# TTLORA_ADD_TASK_BRANCH (demo/<task>).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BIN=${TTLORA_VENV:-$ROOT/.venv}/bin
export PATH=$BIN:$PATH
RUN=${TTLORA_RUN_DIR:-$ROOT/.run}
TASK=${TTLORA_ADD_TASK:-yesno}
ROWS=${TTLORA_ADD_TASK_ROWS:-3000}
PROFILE=${TTLORA_DEMO_PROFILE:-demo}
BRANCH=${TTLORA_ADD_TASK_BRANCH:-demo/$TASK}
export TTLORA_DATA_MIRROR=${TTLORA_DATA_MIRROR:-$(cd "$ROOT/.." && pwd)/shared/datasets}
die() { echo "demo-add-task: error: $1" >&2; exit "${2:-1}"; }

[[ -f $RUN/env.sh ]] || die "no $RUN/env.sh: run \`make demo\` first" 2
# shellcheck disable=SC1091
source "$RUN/env.sh"
CSV=$RUN/$TASK.csv
python - "$TTLORA_DATA_MIRROR/boolq/train.parquet" "$CSV" "$ROWS" <<'PY'
import sys

import pandas as pd

source, out, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
frame = pd.read_parquet(source).sample(n=rows, random_state=7)
pd.DataFrame({"query": frame["question"], "context": frame["passage"],
              "verdict": frame["answer"].map({True: "yes", False: "no"})}).to_csv(out, index=False)
print(f"demo-add-task: wrote {out} ({rows} rows: query, context, verdict)", file=sys.stderr)
PY

versions() {  # the latest version of every expert-* model, one "name version" per line
    python -c 'from ttlora_moe.pipeline import models as m; [print(t, m.latest_version(m.expert_model_name(t))) for t in m.registered_tasks()]'
}
before=$(versions)
ttlora-moe tasks add "$TASK" --source "$CSV" --text query --text-pair context --label verdict \
    --label-names no,yes --description "yes/no questions about a passage (CSV import)" --replace \
    --git-branch "$BRANCH" --train --profile "$PROFILE"
after=$(versions)
unchanged=$(comm -12 <(echo "$before") <(echo "$after") | wc -l)
echo "expert versions before: $(echo "$before" | tr '\n' ' ')" >&2
echo "expert versions after:  $(echo "$after" | tr '\n' ' ')" >&2
[[ $unchanged -eq $(echo "$before" | grep -c .) ]] || die "an existing expert got a new version"
echo "demo-add-task: the $unchanged existing expert versions are unchanged; $TASK joined the bundle" >&2
