#!/usr/bin/env bash
# train_ab.sh OLD NEW ROUNDS: alternating `tiering train --data /tmp/b1m` runs, wall and peak RSS.
set -euo pipefail
mkdir -p "${OUT:-/tmp/tiering-bench}"
OLD=$1; NEW=$2; ROUNDS=${3:-2}
for r in $(seq "$ROUNDS"); do
  for tag in new old; do
    bin=$NEW; [ "$tag" = old ] && bin=$OLD
    rm -rf "${OUT:-/tmp/tiering-bench}/m_${tag}_$r"
    /usr/bin/time -v "$bin" train --data /tmp/b1m --models "${OUT:-/tmp/tiering-bench}/m_${tag}_$r" --seed 7 > "${OUT:-/tmp/tiering-bench}/train_${tag}_$r.log" 2> "${OUT:-/tmp/tiering-bench}/train_${tag}_$r.time"
    wall=$(grep "Elapsed (wall" "${OUT:-/tmp/tiering-bench}/train_${tag}_$r.time" | awk '{print $NF}')
    rss=$(grep "Maximum resident" "${OUT:-/tmp/tiering-bench}/train_${tag}_$r.time" | awk '{printf "%.0f", $NF/1024}')
    echo "round=$r $tag wall=$wall peak_rss_mb=$rss load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
