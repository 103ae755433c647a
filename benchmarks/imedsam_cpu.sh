#!/usr/bin/env bash
# I-MedSAM / zero-shot LiteMedSAM CPU benchmark (benchmarks/results/imedsam-cpu.md): the exact commands, in the
# order they ran, each step under the shared heavy-job lock with a 10-minute limit.
# Usage: benchmarks/imedsam_cpu.sh WORK_DIR   (needs ../shared/data and the LiteMedSAM wheel, --no-deps)
set -euo pipefail
WORK=${1:?work folder}
DATA=${DATA:-../shared/data}
mkdir -p "$WORK"
DATA=$(cd "$DATA" && pwd)
cd "$WORK"

# Evenly spaced subsets of the official splits (sorted names), so that the CPU budget fits.
python - "$DATA" <<'PY'
import csv, pickle, sys
root = sys.argv[1]
def names(d, split):
    return sorted(pickle.load(open(f"{root}/{d}/{d}_train_test_names.pkl", "rb"))[split]["name_list"])
def every(xs, n):
    return [xs[int(i * len(xs) / n)] for i in range(n)]
def write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("name", "split"), *rows])
isic_test = every(names("isic2017", "test"), 40)
isic_train = every(names("isic2017", "train"), 160)
isic_val = every(names("isic2017", "val"), 12)
write("isic2017_subset.csv", [(n, "test") for n in isic_test] + [(n, "train") for n in isic_train]
      + [(n, "val") for n in isic_val])
write("glas_subset.csv", [(n, "test") for n in every(names("glas", "test"), 40)]
      + [(n, "train") for n in every(names("glas", "train"), 4)])
write("isic2017_train48.csv", [(n, "test") for n in isic_test] + [(n, "train") for n in isic_train[::3][:48]]
      + [(n, "val") for n in isic_val[:6]])
write("isic2017_test4.csv", [(n, "test") for n in isic_test[::10][:4]] + [(n, "train") for n in isic_train[:4]])
write("isic2017_test2.csv", [(n, "test") for n in isic_test[::10][:2]] + [(n, "train") for n in isic_train[:4]])
PY

heavy() { flock /tmp/genmedseg-heavy.lock timeout 600 "$@"; }
evaluate() { /usr/bin/time -f "%e s wall" genmedseg evaluate --threads 2 "$@" --batch-size 4; }

# Zero-shot LiteMedSAM as shipped: ground-truth boxes on GlaS and ISIC, and no prompt on ISIC.
python -c "from genmedseg.models.registry import create_model; create_model('litemedsam').save_pretrained('lite')"
heavy bash -c "$(declare -f evaluate);
  evaluate lite --data $DATA/glas --split-file glas_subset.csv --split test --out zs_glas --prompts from-mask;
  evaluate lite --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out zs_isic2017 --prompts from-mask;
  evaluate lite --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out zs_isic2017_noprompt"

# Short I-MedSAM training (LiteMedSAM encoder) on 48 ISIC training images.
heavy genmedseg train --model i-medsam --data "$DATA/isic2017" --split-file isic2017_train48.csv --image-size 256 \
  --epochs 3 --batch-size 4 --max-minutes 7.5 --val-every 3 --preview-every 0 --threads 2 --seed 0 \
  --option train_grid=64 --out im_isic

# I-MedSAM: ground-truth boxes at the native grid and at 1/4 (the 10-minute limit cut the 1/4 run off under load;
# it ran again, with the no-prompt run on all 40, as a last step).
heavy bash -c "$(declare -f evaluate);
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out im_eval_gt --prompts from-mask;
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out im_eval_gt_q --prompts from-mask --resolution 64"

# Cross-resolution and no prompt on a few test images, cheapest first: 1/4 (64) on 4 images, 4x (1024) on 2.
heavy bash -c "$(declare -f evaluate);
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_test4.csv --split test --out x_im_isic_64 --prompts from-mask --resolution 64;
  evaluate lite --data $DATA/isic2017 --split-file isic2017_test4.csv --split test --out x_lite_64 --prompts from-mask --resolution 64;
  evaluate lite --data $DATA/isic2017 --split-file isic2017_test2.csv --split test --out x_lite_1024 --prompts from-mask --resolution 1024;
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_test4.csv --split test --out im_eval_none4;
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_test2.csv --split test --out x_im_isic_1024 --prompts from-mask --resolution 1024"

# The 1/4 grid and no prompt on the 40 test images (rerun once the machine was less loaded).
heavy bash -c "$(declare -f evaluate);
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out im_eval_gt_q --prompts from-mask --resolution 64;
  evaluate im_isic --data $DATA/isic2017 --split-file isic2017_subset.csv --split test --out im_eval_none"
