#!/usr/bin/env bash
# The user documentation describes the software as it is, not the history of its making: no
# numbered work sessions, issue numbers, "target not reached" or borrowed machines. Measurement
# history belongs in CHANGELOG.md (not checked) and in git. Exit 1 listing file:line: text.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='session|issue #?[0-9]|the issue'"'"'s|not (reached|met)\b|workplace|\blent\b|borrowed machine'
if hits=$(grep -HinE "$pattern" README.md docs/*.md); then
    echo "history words in the user documentation (move them to CHANGELOG.md or restate as facts):"
    echo "$hits"
    exit 1
fi
