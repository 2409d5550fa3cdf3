#!/usr/bin/env bash
# Every command form of README.md and docs/results.md, run with tiny step counts: does each
# still run? One line per command (OK / FAIL with its last lines), then the count.
#   bash tools/documented_commands.sh [OUT_DIR]     # (~7 min on 2 cores)
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1  # MNIST from $MNIST_DIR as train.py reads it; else downloaded or drawn
O="${1:-$(mktemp -d)}"; mkdir -p "$O"; O=$(cd "$O" && pwd)
ok=0; bad=0
run() { local name="$1"; shift; if "$@" > $O/$name.log 2>&1; then ok=$((ok+1)); echo "OK   $name"; else bad=$((bad+1)); echo "FAIL $name: $*"; tail -3 $O/$name.log; fi; }
T="--max_steps 4 --log_every 2 --ckpt_every 2 --val_clips 8 --batch_size 4"
python - "$O/videos" <<'PY'  # a folder of .npy videos for the paper presets
import os, sys, numpy as np
os.makedirs(sys.argv[1], exist_ok=True)
rng = np.random.default_rng(0)
for i in range(6):
    np.save(os.path.join(sys.argv[1], f"v{i}.npy"), rng.integers(0, 255, (40, 72, 80, 3), dtype=np.uint8))
PY
run default python train.py $T --out_dir $O/laptop
run resume python train.py $T --out_dir $O/laptop --resume true --max_steps 6
run snapshot python train.py $T --snapshot_every 2 --seed 1 --out_dir $O/laptop_s1
run seed2 python train.py $T --seed 2 --out_dir $O/laptop_s2
run avx2_emulated env ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python train.py --ema_start 0.998 --dtype float32 --max_steps 4 --val_clips 0 --log_every 100 --out_dir $O/avx2
for p in laptop_vjepa laptop_long laptop_vjepa_long laptop_pixel laptop_multiblock laptop_tube laptop_causal; do
  run $p python train.py --preset $p $T --out_dir $O/$p; done
for p in vjvcr vjvcr_dec generative_vcr generative switch_none switch_discrete switch_sparse80 switch_sparse20; do
  run $p python train.py --preset $p --max_steps 4 --log_every 2 --ckpt_every 2 --batch_size 16 --val_clips 8 --out_dir $O/$p; done
P="--data_path $O/videos --img_size 64 --enc_depth 2 --pred_depth 2 --batch_size 2 --max_steps 2 --log_every 1 --ckpt_every 1 --num_workers 0"
for p in vitl16 vith16 vith16_384; do run $p python train.py --preset $p $P --out_dir $O/$p; done
for p in laptop laptop_vjepa laptop_long laptop_vjepa_long laptop_pixel laptop_multiblock laptop_tube laptop_causal vjvcr vjvcr_dec generative_vcr generative switch_none switch_discrete switch_sparse80 switch_sparse20; do
  b=2; case $p in vjvcr*|generative*|switch*) b=8;; esac
  run torchrun_$p torchrun --standalone --nproc_per_node=2 train.py --preset $p --max_steps 4 --log_every 2 --ckpt_every 2 --batch_size $b --val_clips 8 --out_dir $O/tr_$p; done
for p in vitl16 vith16 vith16_384; do run torchrun_$p torchrun --standalone --nproc_per_node=2 train.py --preset $p $P --batch_size 1 --out_dir $O/tr_$p; done
run torchrun_resume torchrun --standalone --nproc_per_node=2 train.py --preset laptop --max_steps 6 --log_every 2 --ckpt_every 2 --batch_size 2 --val_clips 8 --out_dir $O/tr_laptop --resume true
run rope python train.py $T --pos rope --out_dir $O/rope
run wsd python train.py $T --schedule wsd --cooldown_steps 2 --max_steps 100 --stop_at 4 --out_dir $O/wsd
run wsd_cooldown bash -c "cp -r $O/wsd $O/wsd_cool && python train.py $T --schedule wsd --cooldown_steps 2 --max_steps 6 --out_dir $O/wsd_cool --resume true"
run rooms python train.py --preset rooms $T --out_dir $O/rooms
run rooms_ac python train.py --preset rooms_ac $T --encoder_ckpt $O/rooms/ckpt.pt --out_dir $O/rooms_ac
for p in rooms rooms_ac; do
  run torchrun_$p torchrun --standalone --nproc_per_node=2 train.py --preset $p --max_steps 4 --log_every 2 --ckpt_every 2 --batch_size 2 --val_clips 8 --encoder_ckpt $O/rooms/ckpt.pt --out_dir $O/tr_$p; done
run plan python plan.py --ckpt $O/rooms_ac/ckpt.pt --episodes 2 --random_inits 1
PL="--fit_clips 64 --test_clips 32 --random_inits 1 --cache_dir $O/cache"  # linear probes
PR="$PL --pairs 16"
run probe python probe.py --ckpt $O/laptop/ckpt.pt $PR
run probe_seeds python probe.py --ckpt $O/laptop_s1/ckpt.pt $O/laptop_s2/ckpt.pt $PR --out_dir $O/probe_seeds
run attentive python tools/attentive.py --ckpt $O/laptop_s1/ckpt.pt $O/laptop_s2/ckpt.pt --seeds 1 --random_inits 1 --fit_clips 32 --test_clips 16 --epochs 1 --out_dir $O/probe_seeds
run probe_vcr_error bash -c "python probe.py --ckpt $O/vjvcr/ckpt.pt $PR 2>&1 | grep -q tools/probe_vcr.py"
for p in vjvcr vjvcr_dec generative_vcr generative switch_none switch_discrete switch_sparse80 switch_sparse20; do
  run probe_vcr_$p python tools/probe_vcr.py --ckpt $O/$p/ckpt.pt --fit_clips 64 --test_clips 32 --random_inits 1 --decoder_steps 2; done
run tables python tools/tables.py $O/laptop/probe $O/probe_seeds
run tables_recipes python tools/tables.py --recipes $O/laptop/probe $O/probe_seeds
run tables_vcr python tools/tables.py $O/vjvcr/probe $O/generative/probe
run tables_t2 python tools/tables.py $O/switch_none/probe $O/switch_discrete/probe
run curve python tools/curve.py $O/laptop_s1 $PL
run context python tools/context.py $O/laptop/ckpt.pt --clips 16
run layer_probe python tools/layer_probe.py --ckpt $O/laptop_s1/ckpt.pt $O/laptop_s2/ckpt.pt $PL --out_dir $O/layers
run attentive_sweep python tools/attentive_sweep.py --ckpt $O/laptop/ckpt.pt --seeds 1 --settings 32:1e-2:1:16 --test_clips 16
run check_videos python tools/check_videos.py --data_path $O/videos
run mask_stats python tools/mask_stats.py --batch 2 --batches 3
run gpu_check_dry python tools/gpu_check.py --dry
run benchmark_smoke python tools/benchmark.py --smoke --configs laptop --out $O/bench
echo "$ok OK, $bad failed"
