#!/usr/bin/env bash
# Side-by-side with Concrete ML on the same architecture, in one run on this machine: first a whole
# encrypted `pkn` run (keygen, encrypt a sample, infer, decrypt, as benches/whole_run.sh), right after
# it Concrete ML's (Brevitas 4-bit QAT of the same layers, compiled with Concrete ML's defaults,
# `forward(fhe="execute")` on the same test image); then a table with the ratio Concrete ML / pkn.
#
# Usage: bash benches/compare_concrete_ml.sh [tiny-pkn|cnn-pkn] [compare.py options...]
#   e.g. bash benches/compare_concrete_ml.sh tiny-pkn --epochs 2 --fhe-images 3
# Run from anywhere; not part of CI. The first run makes target/concrete-venv (about 5 GiB: PyPI's
# torch brings its CUDA wheels) from benches/concrete_ml/requirements.txt; CONCRETE_VENV overrides.
# If `pkn inspect --model M` fails (no weights, or the compiler refuses the circuit), pkn's side is
# reported unavailable with inspect's reason and only Concrete ML's side runs.
set -euo pipefail
model=${1:-tiny-pkn}
[ $# -gt 0 ] && shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${CONCRETE_VENV:-$root/target/concrete-venv}
req=$root/benches/concrete_ml/requirements.txt

# Fashion-MNIST for Concrete ML's training and accuracy.
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    apt-get install -y dataset-fashion-mnist >/dev/null || { apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null; }
fi

# The virtualenv, remade when requirements.txt changes.
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing Concrete ML into $venv (several minutes, a few GiB)"
    t0=$(date +%s)
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    echo "$want" > "$stamp"
    echo "   installed in $(( $(date +%s) - t0 )) s, $(du -sh "$venv" | cut -f1)"
fi

cargo build --release -q
bin=$root/target/release/pkn
export PKN_WEIGHTS=$root/weights
sample=$root/samples/test-1-pullover.png   # Fashion-MNIST test image 1; compare.py defaults to it too
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
s() { case $1 in [0-9]*) echo "$1 s" ;; nan) echo "-" ;; *) echo "$1" ;; esac; }   # "12.3 s", or the word as is
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "== $model on $(nproc) cores, $(date -u '+%F %H:%M') UTC; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- pkn ---
ours_keygen=unavailable ours_image=unavailable ours_pbs=- ours_pfail=unavailable ours_class=- ours_key=- ours_exact=-
if inspect=$("$bin" inspect --model "$model" 2>&1); then
    echo "$inspect" | sed 's/^/   /'
    ours_pbs=$(echo "$inspect" | sed -n 's/^bootstraps: \([0-9]*\).*/\1/p')
    ours_pfail=$(echo "$inspect" | sed -n 's/.*worst log2 p-fail \([-0-9.]*\), limit \([-0-9]*\)).*/worst 2^\1, limit 2^\2/p' | head -1)
    (
        cd "$work"
        t0=$(now); "$bin" keygen --model "$model" >/dev/null; t1=$(now)
        "$bin" encrypt "$sample" --model "$model" >/dev/null; t2=$(now)
        "$bin" infer --model "$model" > infer.log; t3=$(now)
        "$bin" decrypt > decrypt.log; t4=$(now)
        echo "keygen $(secs "$t0" "$t1") encrypt $(secs "$t1" "$t2") infer $(secs "$t2" "$t3") decrypt $(secs "$t3" "$t4") image $(secs "$t1" "$t4")" > times
    )
    read -r _ ours_keygen _ enc _ inf _ dec _ ours_image < "$work/times"
    ours_class=$(head -1 "$work/decrypt.log")
    ours_key="$(( $(stat -c %s "$work/server.key") / 1000000 )) MB"
    # The decrypted scores against the clear integer circuit's on the same image.
    "$bin" infer --model "$model" --clear "$sample" | tail -n +2 > "$work/clear.log"
    if cmp -s "$work/clear.log" "$work/decrypt.log"; then
        ours_exact="all decrypted scores equal pkn infer --clear's"
    else
        ours_exact="MISMATCH with pkn infer --clear (see $work)"
    fi
    echo "   pkn: keygen $ours_keygen s; encrypt $enc s, infer $inf s, decrypt $dec s: $ours_image s per image"
    echo "   pkn decrypt: $ours_class; $ours_exact"
else
    reason=$(echo "$inspect" | grep -v '^ *$' | tail -1)
    echo "   pkn refuses $model: $reason"
fi

# --- Concrete ML, right after ---
"$venv/bin/python" -u "$root/benches/concrete_ml/compare.py" --model "$model" "$@" 2>&1 \
    | grep -v -e 'UserWarning' -e 'warnings.warn' | tee "$work/cml.log"
result=$(grep '^RESULT ' "$work/cml.log" | tail -1)
get() { echo "$result" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
theirs=$(get fhe_s_per_image)
rounding=$(get rounding)
case $rounding in none) settings="Concrete ML defaults: p_error 2^-40 per PBS, no rounding" ;;
    *) settings="p_error 2^-40 per PBS (default), rounding_threshold_bits $rounding (NOT the default)" ;; esac
theirs_txt=$(s "$theirs")
[ "$theirs" = nan ] && theirs_txt="not run: server keys $(get key_gib) GiB (see above)"
ratio=$(awk -v t="$theirs" -v o="$ours_image" 'BEGIN { if (o + 0 > 0 && t == t + 0 && t != "nan") printf "%.2f", t / o; else print "-" }')

cat <<EOF

== $model: encrypted inference of one image, $(nproc) cores, same run
| | pkn | Concrete ML $(get version) |
|---|---|---|
| key generation | $(s "$ours_keygen") | $(s "$(get keygen_s)") |
| encrypted image (encrypt + infer + decrypt) | $(s "$ours_image") | $theirs_txt |
| ratio Concrete ML / pkn | | $ratio |
| bootstraps | $ours_pbs | $(get pbs) |
| server keys | $ours_key | $(get key_gib) GiB |
| settings | pkn's only setting: p-fail <= 2^-64 per bootstrap | $settings |
| precision | exact ($ours_exact); p-fail of bootstraps and decryption: $ours_pfail | approximate: p_error $(get p_error) per PBS, global_p_error as Concrete reports it $(get global_p_error); max bit width $(get max_bit_width) |
| accuracy | see pkn eval (README) | Brevitas $(get acc_torch), quantized clear $(get acc_clear), simulated $(get acc_sim) |
EOF
[ "$ours_image" = unavailable ] && echo "pkn's side unavailable: ${reason:-}"
exit 0
