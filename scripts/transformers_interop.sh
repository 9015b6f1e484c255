#!/usr/bin/env bash
# Trains small models with Ember (a GPT-2 pretraining run, a LoRA instruction fine-tuning
# of the tiny Qwen3), then checks that transformers loads each saved model and gives the
# same prompt ids, greedy tokens, loss and logits (1e-4) as Ember. Needs a Python with torch and
# transformers: PYTHON (default /work/venv/bin/python; scripts/reference/README.md sets one up).
# Usage: scripts/transformers_interop.sh [EMBER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
ember="${1:-target/release/ember}"
python="${PYTHON:-/work/venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export EMBER_LOG=warn
python3 -c "import json; json.dump(json.load(open('datasets/instruction-data.json'))[:60], open('$work/data.json', 'w'))"
"$ember" pretrain --preset tiny --out "$work/gpt2" --max-steps 3 --quiet >/dev/null
"$ember" finetune-instruct --base tests/fixtures/tiny-qwen3 --lora 8 --out "$work/qwen3" \
    --data "$work/data.json" --max-steps 5 --responses 1 --quiet --set train.lr=5e-3 --set max_new_tokens=4 >/dev/null
prompt="Every effort moves you"
text="$work/text.txt"
# Within the smallest context (64 positions): transformers does not window long texts.
head -c 200 datasets/the-verdict.txt > "$text"
status=0
# Ember's logits of the text, beside each model, for the Python side to compare.
for dir in "$work/gpt2/model" "$work/qwen3/model"; do
    "$ember" perplexity --model "$dir" --text-file "$text" --logits-out "$dir/ember-logits.safetensors" --json >/dev/null
done
while read -r line; do
    dir=$(echo "$line" | python3 -c "import json,sys; print(json.load(sys.stdin)['dir'])")
    ours=$("$ember" generate --model "$dir" --prompt "$prompt" --max-new-tokens 16 --no-stop --json)
    loss=$("$ember" perplexity --model "$dir" --text-file "$text" --json)
    python3 - "$line" "$ours" "$loss" <<'PY' || status=1
import json, sys
theirs, ours, loss = (json.loads(a) for a in sys.argv[1:])
ok_ids = theirs["prompt_ids"] == ours["prompt_ids"] and theirs["generated_ids"] == ours["generated_ids"]
rel = abs(theirs["loss"] - loss["loss"]) / theirs["loss"]
diff = theirs["max_logit_diff"]
print(f"{theirs['dir'].rsplit('/', 2)[-2]}: ids {'equal' if ok_ids else 'DIFFER'}, loss transformers {theirs['loss']:.6f} Ember {loss['loss']:.6f} ({rel:.1e} relative), logits within {diff:.1e}")
sys.exit(0 if ok_ids and rel < 1e-5 and diff <= 1e-4 else 1)
PY
done < <("$python" scripts/transformers_interop.py "$prompt" "$text" "$work/gpt2/model" "$work/qwen3/model" 2> >(grep -v "Loading weights" >&2))
exit $status
