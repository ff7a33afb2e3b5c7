#!/usr/bin/env bash
# Side-by-side with Concrete ML on the same architecture, in one run on this machine: first a whole
# encrypted `pkn` run (keygen, encrypt a sample, infer, decrypt, as benches/whole_run.sh) and pkn's
# integer accuracy (`pkn eval`), right after it Concrete ML's: the same layers trained as pkn's are
# (float epochs, then Brevitas 4-bit QAT, on the full training set), compiled in every configuration
# (no rounding, exact and approximate rounding at 5, 6 and 7 bits), each run encrypted on the same test
# image where its keys fit in memory, each in a process of its own whose encrypted run is stopped
# once it is slower than the fastest configuration of its kind that ran (approximate rounding: the
# fastest; exact or no rounding: the fastest exact; --stop-at-ratio seeds both from an earlier run);
# then a table with the ratio Concrete ML / pkn per configuration, and the ratios against its fastest configuration that ran and its fastest exact one.
#
# Usage: bash benches/compare_concrete_ml.sh [cnn-pkn|tiny-pkn] [compare.py options...]
#   e.g. bash benches/compare_concrete_ml.sh cnn-pkn --configs 6-exact,7-approximate --stop-at-ratio 1.37,2.67
# Run from anywhere; not part of CI. The first run makes target/concrete-venv (about 5 GiB: PyPI's
# torch brings its CUDA wheels) from benches/concrete_ml/requirements.txt; CONCRETE_VENV overrides.
# If `pkn inspect --model M` fails (no weights, or the compiler refuses the circuit), pkn's side is
# reported unavailable with inspect's reason and only Concrete ML's side runs.
set -euo pipefail
model=${1:-cnn-pkn}
[ $# -gt 0 ] && shift
# --stop-at-ratio A,B (this script's own option): --stop-after for compare.py in seconds, A and B times
# pkn's time per image in this run, so that bounds taken as ratios from an earlier run hold on a
# machine faster or slower today.
args=() stop_ratio=
while [ $# -gt 0 ]; do
    case $1 in
        --stop-at-ratio) stop_ratio=${2:?--stop-at-ratio wants A,B}; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
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
ours_keygen=unavailable ours_image=unavailable ours_pbs=- ours_pfail=unavailable ours_class=- ours_key=- ours_exact=- ours_acc=-
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
    ours_acc=$("$bin" eval --model "$model" 2>/dev/null | sed -n 's/.*accuracy \([0-9.]* %\).*/\1/p' | head -1)
    echo "   pkn: keygen $ours_keygen s; encrypt $enc s, infer $inf s, decrypt $dec s: $ours_image s per image; integer accuracy $ours_acc"
    echo "   pkn decrypt: $ours_class; $ours_exact"
else
    reason=$(echo "$inspect" | grep -v '^ *$' | tail -1)
    echo "   pkn refuses $model: $reason"
fi

# --- Concrete ML, right after ---
if [ -n "$stop_ratio" ]; then
    [ "$ours_image" = unavailable ] && { echo "--stop-at-ratio needs pkn's side, which is unavailable" >&2; exit 1; }
    stop=$(awk -v r="$stop_ratio" -v o="$ours_image" 'BEGIN { split(r, p, ","); printf "%.1f,%.1f", p[1] * o, p[2] * o }')
    echo "   stopping encrypted runs at $stop s (ratios $stop_ratio to pkn's $ours_image s)"
    args+=(--stop-after "$stop")
fi
# Line-buffered, so that the log shows each configuration as it ends; a Concrete ML side stopped
# early (a configuration that runs too long) still gets the table of those that ended.
"$venv/bin/python" -u "$root/benches/concrete_ml/compare.py" --model "$model" "${args[@]}" 2>&1 \
    | grep --line-buffered -v -e 'UserWarning' -e 'warnings.warn' | tee "$work/cml.log" || true
grep '^RESULT ' "$work/cml.log" > "$work/results" || true
get() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v t="$1" -v o="$ours_image" 'BEGIN { if (o + 0 > 0 && t == t + 0 && t != "nan") printf "%.2f", t / o; else print "-" }'; }
# Exact: every output value of every encrypted image equals Concrete ML's own clear circuit's.
is_exact() { awk -v e="$1" 'BEGIN { n = split(e, p, "/"); print (n == 2 && p[1] == p[2]) ? "yes" : "no" }'; }

echo
echo "== $model: encrypted inference of one image, $(nproc) cores, same run"
echo "pkn: $ours_image s per image (encrypt + infer + decrypt), key generation $ours_keygen s, $ours_pbs bootstraps,"
echo "     server key $ours_key, integer accuracy $ours_acc (10k test images); exact ($ours_exact); $ours_pfail"
echo
echo "| Concrete ML configuration | seconds per image | ratio Concrete ML / pkn | PBS | optimizer complexity | server keys | outputs equal to its clear circuit | quantized-clear accuracy |"
echo "|---|---|---|---|---|---|---|---|"
fastest= fastest_s= fastest_exact= fastest_exact_s=
while read -r line; do
    c=$(get "$line" config) t=$(get "$line" fhe_s_per_image) e=$(get "$line" exact_outputs)
    stop=$(get "$line" stopped_after) r=$(ratio "$t")
    if [ -n "$(get "$line" failed)" ]; then
        shown="failed ($(get "$line" failed); the log above says why)"
    elif [ "$(get "$line" keys_fit)" = no ]; then
        shown="not run: keys $(get "$line" key_gib) GiB exceed 80 % of this machine's memory"
    elif [ "$stop" != - ]; then
        shown="> $stop s: stopped, slower than the fastest of its kind" r="> $(ratio "$stop")"
    else
        shown=$(s "$t")
    fi
    echo "| $c | $shown | $r | $(get "$line" pbs) | $(get "$line" complexity) | $(get "$line" key_gib) GiB | $e | $(get "$line" acc_clear) |"
    if [ "$t" != nan ]; then
        if [ -z "$fastest_s" ] || awk -v a="$t" -v b="$fastest_s" 'BEGIN { exit !(a < b) }'; then fastest=$c fastest_s=$t; fi
        if [ "$(is_exact "$e")" = yes ] && { [ -z "$fastest_exact_s" ] || awk -v a="$t" -v b="$fastest_exact_s" 'BEGIN { exit !(a < b) }'; }; then
            fastest_exact=$c fastest_exact_s=$t
        fi
    fi
done < "$work/results"
first=$(head -1 "$work/results")
echo
echo "Concrete ML $(get "$first" version): Brevitas accuracy $(get "$first" acc_torch) (10k test images); its default p_error setting in every configuration (the p_error each compiled to is in the log above)."
echo "Against its fastest configuration that ran (${fastest:-none}): ratio $(ratio "${fastest_s:-nan}")"
echo "Against its fastest exact configuration (${fastest_exact:-none}): ratio $(ratio "${fastest_exact_s:-nan}")"
[ "$ours_image" = unavailable ] && echo "pkn's side unavailable: ${reason:-}"
exit 0
