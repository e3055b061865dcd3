#!/usr/bin/env bash
# What only a GPU can show, in one script for a session that is lent one (about 8 minutes on an H200):
#   1. the device and the precisions chestdx finds on it (engine/precision.py supported_computes);
#   2. `chestdx train` of ResNet-50 at 224 px with `--speed auto` against `--speed fp32` on the GPU:
#      the mode auto picks, the wall time of each (train.json), and `chestdx evaluate` of both;
#   3. the same training under DDP (`--strategy ddp`, every visible GPU);
#   4. the CMC-COV19D 3D step at 128x256x256 in bf16 (benchmarks/bench_volume.py: peak memory, volumes/s).
# Everything goes to $OUT (default gpu_check/): one log per step and summary.json.
#
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Test of the script itself on a CPU, at toy sizes (84 s on 2 cores):
#   ACCEL=cpu SMALL=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh
#
# On the lent H200 (Python 3.12, no registry): torch, torchvision, lightning, timm and torchmetrics are
# there; chestdx also needs monai, pydantic (+ pydantic-core, annotated-types, typing-inspection),
# pydicom, nibabel, pycocotools, fastapi, starlette, uvicorn and python-multipart, carried as wheels
# (see the device tool's README for the `pip download --python-version 3.12` line and the install).
set -euo pipefail
PY=${PY:-python3}
OUT=${OUT:-gpu_check}
ACCEL=${ACCEL:-cuda}
SMALL=${SMALL:-0}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
CX=("$PY" -c "import sys; from chestdx.cli import main; sys.exit(main(sys.argv[1:]))")

# train_run NAME EPOCHS DEVICES [chestdx train options]: the baseline recipe on the phantom into $OUT/run_NAME
train_run() {
  local name=$1 epochs=$2 devices=$3
  shift 3
  rm -rf "$OUT/run_$name"
  "${CX[@]}" train baseline --data "$OUT/phantom/manifest.csv" --out "$OUT/run_$name" --no-progress \
    --backbone "$BACKBONE" --weights none --image-size "$SIZE" --batch-size "$BATCH" --epochs "$epochs" \
    --accelerator "$LIGHTNING_ACCEL" --devices "$devices" "$@"
}

if [ "$SMALL" = 1 ]; then
  SIZE=32; PATIENTS=4; EPOCHS=1; BATCH=8; BACKBONE=resnet18; VOL=(--small --shapes 8x32x32 --steps 1 --loading 0)
  LIGHTNING_ACCEL=cpu
else
  SIZE=224; PATIENTS=40; EPOCHS=2; BATCH=32; BACKBONE=resnet50
  VOL=(--device cuda --precision bf16-mixed --shapes 64x128x128 128x256x256 --steps 3 --loading 0)
  LIGHTNING_ACCEL=gpu
fi

echo "== 1. device" | tee "$OUT/device.log"
"$PY" - "$ACCEL" <<'EOF' | tee -a "$OUT/device.log"
import sys
import torch
from chestdx.engine import precision as P
dev = sys.argv[1]
print("torch", torch.__version__, "cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
print(P.device_description(dev), "supports", P.supported_computes(dev))
EOF

echo "== 2. train ResNet-50: speed auto against fp32" | tee "$OUT/train.log"
"${CX[@]}" synth --out "$OUT/phantom" --classes 2 --sites 2 --patients "$PATIENTS" --size "$SIZE" >>"$OUT/train.log" 2>&1
# a one-epoch auto run first, so that auto's one-time measurement (cached per machine) is not in the timed run
train_run warm 1 1 --speed auto >>"$OUT/train.log" 2>&1
for speed in auto fp32; do
  train_run "$speed" "$EPOCHS" 1 --speed "$speed" >>"$OUT/train.log" 2>&1
  "${CX[@]}" evaluate "$OUT/run_$speed" --n-boot 100 --no-progress --accelerator "$ACCEL" \
    --speed "$speed" >>"$OUT/train.log" 2>&1
done

echo "== 3. DDP" | tee "$OUT/ddp.log"
train_run ddp "$EPOCHS" "$([ "$SMALL" = 1 ] && echo 1 || echo auto)" --strategy ddp >>"$OUT/ddp.log" 2>&1

echo "== 4. 3D step" | tee "$OUT/volume.log"
"$PY" benchmarks/bench_volume.py "${VOL[@]}" --out "$OUT/volume.json" >>"$OUT/volume.log" 2>&1

"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {}
for name in ("auto", "fp32", "ddp"):
    run = out / f"run_{name}"
    t = json.loads((run / "train.json").read_text())
    ev = run / "eval-test" / "metrics.json"
    summary[name] = {"speed": t.get("speed"), "wall_s": t.get("wall_seconds"), "epochs": t.get("epochs_run"),
                     "test_accuracy": json.loads(ev.read_text())["overall"]["accuracy"]["value"] if ev.is_file() else None}
a, f = summary["auto"]["wall_s"], summary["fp32"]["wall_s"]
if a and f:
    summary["fp32_over_auto_wall"] = round(f / a, 2)
vol = out / "volume.json"
summary["volume"] = json.loads(vol.read_text()) if vol.is_file() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
