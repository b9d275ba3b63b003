#!/bin/bash
# SLS vs uniform N:M on RFDN and CARN-M x4: equal training steps (SLS: 30 search + 30
# fine-tuning; uniform: 60 fine-tuning), Set5 HR patches (Set14/B100 are evaluated).
set -e
cd "$(dirname "$0")/.."
export PYTHONPATH=python
FT="--batch 8 --patch 24 --train-data Set5 --threads 1 --seed 0"
for net in rfdn_x4 carn_m_x4; do
  B=artifacts/$net.pt; O=artifacts/sls/$net
  mkdir -p $O
  nice -n 10 python tools/sls_search.py $B -o $O/sls_q4.pt --budget 0.25 --m 16 --search-steps 30 --finetune-steps 30 $FT --json $O/sls_q4.json
  nice -n 10 python tools/sls_search.py $B -o $O/sls_q8.pt --budget 0.125 --m 16 --search-steps 30 --finetune-steps 30 $FT --json $O/sls_q8.json
  nice -n 10 python tools/nm_prune.py $B -o $O/uniform_4of16.pt --n 4 --m 16 --finetune-steps 60 $FT --json $O/uniform_4of16.json
  nice -n 10 python tools/nm_prune.py $B -o $O/uniform_2of16.pt --n 2 --m 16 --finetune-steps 60 $FT --json $O/uniform_2of16.json
  nice -n 10 python tools/nm_prune.py $B -o $O/uniform_2of4.pt --n 2 --m 4 --finetune-steps 60 $FT --json $O/uniform_2of4.json
done
echo done
