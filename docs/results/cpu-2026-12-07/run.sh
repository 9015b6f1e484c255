#!/bin/bash
cd /work/main
PY=/work/venv/bin/python
A=/tmp/ember-before; B=target/release/ember
tiny="--mode train --preset tiny --steps 5"
for r in 1 2 3; do
  echo "round $r"
  EMBER_LOG=warn $A --backend flex bench $tiny | tail -1 | sed 's/^/before /'
  EMBER_LOG=warn $B --backend flex bench $tiny | tail -1 | sed 's/^/after /'
  $PY bench/torch_gpt_bench.py $tiny --attn sdpa | tail -1 | sed 's/^/torch_sdpa /'
  EMBER_LOG=warn $A --backend flex bench $tiny --precision bf16 | tail -1 | sed 's/^/before_bf16 /'
  EMBER_LOG=warn $B --backend flex bench $tiny --precision bf16 | tail -1 | sed 's/^/after_bf16 /'
done
big="--mode train --preset gpt2-small --steps 2 --context 1024"
for r in 1 2; do
  echo "round $r ctx1024"
  EMBER_LOG=warn $B --backend flex bench $big | tail -1 | sed 's/^/after_1024 /'
  $PY bench/torch_gpt_bench.py $big --attn sdpa | tail -1 | sed 's/^/torch_sdpa_1024 /'
  EMBER_LOG=warn $A --backend flex bench $big | tail -1 | sed 's/^/before_1024 /'
done
echo done
