#!/usr/bin/env bash
# One table of the product's GPU costs (issue 18), on random weights (speed, not quality).
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA GPU: about 8 minutes
#   bash benchmarks/gpu.sh --dry-run  # the same script on the CPU at tiny sizes (checks it; numbers mean nothing)
#
# Rows: PDIG at SD1.5 size (512x512, 60 DDIM steps, TIDSC on the first 30, fp16, batch 1/4/8) with and without
# TIDSC against diffusers' StableDiffusionPipeline (+ PDIG + TIDSC under torch.compile at batch 8); DG2GAN --preset full images/s;
# the anomaly gate's heat maps/s; the Ray Data job with a GPU generator and GPU scoring (GPU utilisation sampled
# with nvidia-smi); a few steps of each trainer. Each section runs in its own process under a time limit: one
# that fails or runs out of time becomes a "skipped/failed: why" row, never a number.
# Run from the repository root with the project's venv active. Env: GPU_BENCH_WORK (scratch dir), GPU_BENCH_JSONL.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
WORK="${GPU_BENCH_WORK:-$(mktemp -d /tmp/gpu-bench.XXXXXX)}"
ROWS="${GPU_BENCH_JSONL:-$WORK/rows.jsonl}"
mkdir -p "$WORK"
: > "$ROWS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 \
  RAY_AUTH_MODE=disabled YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR="$WORK/yolo-config"
if [ $DRY = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  PDIG_ARGS=(--same-process --batches 1,2 --steps 2 --size 64 --reps 1)
  ROW_ARGS=(--dry-run)
  # the non-PDIG sections share one process on the CPU (torch/diffusers/ray imports dominate there);
  # limits are safety nets sized for a loaded 2-core machine, not targets
  GROUPS_=("dg2gan,anomaly,trainers,job")
  LIMITS=(300 600)
else
  PDIG_ARGS=(--full --batches 1,4,8 --reps 1 --compile)
  ROW_ARGS=()
  GROUPS_=(dg2gan anomaly trainers job)  # each in its own process: a CUDA failure stays in its row
  LIMITS=(300 30 40 90 120)  # typical total under 8 minutes; these are the ceilings
fi

section() {  # name, limit, command...: run it; a failure or time-out becomes a row saying so
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    local why
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="over its ${limit} s limit"; else
      why="exit $rc: $(grep -v '^\s*$' "$WORK/$name.log" | tail -1 | cut -c1-160)"; fi
    python - "$ROWS" "$name" "$why" <<'PY'
import json, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"section": sys.argv[2], "what": sys.argv[2], "value": f"failed: {sys.argv[3]}"}) + "\n")
PY
  fi
  echo "section $name: $((SECONDS - t0)) s (log $WORK/$name.log)" >&2
}

section pdig "${LIMITS[0]}" python -u benchmarks/pdig.py "${PDIG_ARGS[@]}" --jsonl "$ROWS"
i=1
for group in "${GROUPS_[@]}"; do
  section "${group//,/+}" "${LIMITS[$i]}" python -u benchmarks/gpu_rows.py "$group" --work "$WORK" --jsonl "$ROWS" "${ROW_ARGS[@]}"
  i=$((i + 1))
done

python - "$ROWS" "$DRY" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from common import machine
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dry = sys.argv[2] == "1"
print(f"machine: {machine()}" + ("  [--dry-run: CPU, tiny sizes; these numbers are not results]" if dry else ""))
print("| section | what | config | result |")
print("|---|---|---|---|")
for r in rows:
    if r["section"] == "pdig" and "variant" in r:
        what = f"{r['variant']}, batch {r['batch']}"
        res = r.get("error") and f"failed: {r['error']}" or (
            f"{r['s_per_image']:.3f} s/image, {r['images_per_s']:.2f} images/s, peak {r['peak_mib']:.0f} MiB ({r['peak_kind']})")
        if "+compile" in r["variant"] and "warmup_s" in r:
            res += f", compile + first call {r['warmup_s']:.0f} s"
        print(f"| pdig | {what} | {r.get('config', '')} | {res} |")
    else:
        print(f"| {r['section']} | {r['what']} | {r.get('config', '')} | {r['value']} |")
pd = {(r["variant"], r["batch"]): r for r in rows if r["section"] == "pdig" and "s_per_image" in r}
for b in sorted({k[1] for k in pd}):
    if all((v, b) in pd for v in ("pdig", "pdig+tidsc", "diffusers-sd")):
        t = lambda v: pd[v, b]["s_per_image"]  # noqa: E731
        print(f"| pdig | ratios, batch {b} | wall s/image | TIDSC / no-TIDSC {t('pdig+tidsc') / t('pdig'):.2f}x; "
              f"PDIG no-TIDSC / diffusers {t('pdig') / t('diffusers-sd'):.2f}x |")
failed = [r for r in rows if "error" in r or str(r.get("value", "")).startswith("failed")]
print(f"{len(rows)} rows, {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
