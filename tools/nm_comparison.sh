#!/bin/bash
# The SMSR x2 N:M comparison (SLS Table-2 style): uniform N:M vs SLS at 1/4 and 1/8 of the core
# MACs with M=32, and 2:4, every fine-tuning 60 steps (batch 8, 48x48 LR patches from B100,
# L1, Adam 1e-4 cosine, seed 0). Runs serially on one torch thread; outputs in artifacts/nm/.
#   tools/nm_comparison.sh            # the comparison (about 40 min on one loaded core)
#   EXTRA=1 tools/nm_comparison.sh    # also: uniform with SLS's total steps (search + fine-tuning)
set -euo pipefail
cd "$(dirname "$0")/.."
B=artifacts/smsr_x2.pt; O=artifacts/nm
mkdir -p $O
[ -f $B ] || python tools/convert.py ../shared/models/smsr_x2_official.pt -o $B
FT="--finetune-steps 60 --finetune-minutes 12 --lr 1e-4 --batch 8 --patch 48 --seed 0"
S="--search-steps 80 --search-minutes 8 --lr-scores 1e-2 --lambda-init 5e-3 --anneal-every 5 --rerank-every 25"
t() { local s; s=$(date +%s); "$@"; echo "ELAPSED $(( $(date +%s) - s ))s: $*"; }
t python tools/nm_prune.py $B -o $O/uniform_8of32_ft.pt --n 8 --m 32 $FT --json $O/uniform_8of32_ft.json
t python tools/sls_search.py $B -o $O/sls_q4.pt --budget 0.25 --m 32 $S $FT --json $O/sls_q4.json
t python tools/nm_prune.py $B -o $O/uniform_4of32_ft.pt --n 4 --m 32 $FT --json $O/uniform_4of32_ft.json
t python tools/sls_search.py $B -o $O/sls_q8.pt --budget 0.125 --m 32 $S $FT --json $O/sls_q8.json
t python tools/nm_prune.py $B -o $O/oneshot_2of4.pt --n 2 --m 4 --json $O/oneshot_2of4.json
t python tools/nm_prune.py $B -o $O/oneshot_2of4_ft.pt --n 2 --m 4 $FT --json $O/oneshot_2of4_ft.json
t python tools/nm_prune.py $B -o $O/oneshot_8of32.pt --n 8 --m 32
t python tools/nm_prune.py $B -o $O/oneshot_4of32.pt --n 4 --m 32
rows=(--model "One-shot 2:4=$O/oneshot_2of4.pt" --model "One-shot 2:4 + FT=$O/oneshot_2of4_ft.pt"
      --model "One-shot 8:32=$O/oneshot_8of32.pt" --model "One-shot 8:32 + FT=$O/uniform_8of32_ft.pt")
if [ -n "${EXTRA:-}" ]; then
  # the same total steps as the SLS runs: search steps + 60 (from their JSON reports)
  q4=$(python -c "import json; print(60 + json.load(open('$O/sls_q4.json'))['search']['steps'])")
  q8=$(python -c "import json; print(60 + json.load(open('$O/sls_q8.json'))['search']['steps'])")
  C="--finetune-minutes 15 --lr 1e-4 --batch 8 --patch 48 --seed 0"
  t python tools/nm_prune.py $B -o $O/uniform_8of32_ft$q4.pt --n 8 --m 32 --finetune-steps $q4 $C
  t python tools/nm_prune.py $B -o $O/uniform_4of32_ft$q8.pt --n 4 --m 32 --finetune-steps $q8 $C
  rows+=(--model "One-shot 8:32 + FT (= SLS total steps)=$O/uniform_8of32_ft$q4.pt")
fi
rows+=(--model "SLS 1/4 + FT=$O/sls_q4.pt" --model "One-shot 4:32=$O/oneshot_4of32.pt"
       --model "One-shot 4:32 + FT=$O/uniform_4of32_ft.pt")
if [ -n "${EXTRA:-}" ]; then
  rows+=(--model "One-shot 4:32 + FT (= SLS total steps)=$O/uniform_4of32_ft$q8.pt")
fi
rows+=(--model "SLS 1/8 + FT=$O/sls_q8.pt")
t python tools/nm_tables.py --base $B --json $O/table.json "${rows[@]}"
