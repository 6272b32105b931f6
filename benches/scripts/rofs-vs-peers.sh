#!/usr/bin/env bash
# faas-rofs vs peers: build time and image size on the same trees, in the
# same run. For each tree: mkfs.erofs (plain), mkfs.erofs -E noinline_data
# (page-aligned data: the same layout as ours), mksquashfs uncompressed
# (-noI -noD -noF -noX) and `faas image build`. Each builder runs RUNS times
# (alternating, page cache warm); the median wall time and the ratios
# ours / peer are printed. Also: warm lookups, through the kernel mount
# (stat) and the loader, are measured by the criterion bench
# (cargo bench -p faas-benches --bench rofs).
#
# usage: benches/scripts/rofs-vs-peers.sh [TREE...]
#   default trees: the Python stdlib (/usr/lib/python3.*) and a node_modules
#   tree installed with npm into $NODE_TREE (default /tmp/faas-bench-node).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-7}
for t in mkfs.erofs mksquashfs; do
    command -v "$t" >/dev/null || { echo "rofs-vs-peers: $t missing (apt-get install erofs-utils squashfs-tools)" >&2; exit 1; }
done
cargo build --release -q -p faas-platform
FAAS=target/release/faas

trees=("$@")
if [ ${#trees[@]} -eq 0 ]; then
    py=$(ls -d /usr/lib/python3.* | head -1)
    NODE_TREE=${NODE_TREE:-/tmp/faas-bench-node}
    if [ ! -d "$NODE_TREE/node_modules" ]; then
        mkdir -p "$NODE_TREE"
        (cd "$NODE_TREE" && npm init -y >/dev/null && npm install --no-audit --no-fund \
            typescript lodash express react react-dom @babel/core webpack >/dev/null)
    fi
    trees=("$py" "$NODE_TREE/node_modules")
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

echo "machine: $(nproc) vCPU, kernel $(uname -r), $(date -u +%Y-%m-%d)"
for tree in "${trees[@]}"; do
    files=$(find "$tree" -type f | wc -l)
    entries=$(find "$tree" | wc -l)
    apparent=$(du -sb --apparent-size "$tree" | cut -f1)
    echo
    echo "tree: $tree ($entries entries, $files files, $apparent bytes apparent)"
    declare -A t=()
    declare -A size=()
    builders=(erofs erofs-noinline squashfs faas)
    for b in "${builders[@]}"; do t[$b]=""; done
    for i in $(seq "$RUNS"); do
        for b in "${builders[@]}"; do
            img="$out/$b.img"
            rm -f "$img"
            s=$(now)
            case $b in
                erofs) mkfs.erofs "$img" "$tree" >/dev/null 2>&1 ;;
                erofs-noinline) mkfs.erofs -E noinline_data "$img" "$tree" >/dev/null 2>&1 ;;
                squashfs) mksquashfs "$tree" "$img" -noI -noD -noF -noX -no-progress -quiet >/dev/null 2>&1 ;;
                faas) "$FAAS" image build "$tree" -o "$img" >/dev/null ;;
            esac
            e=$(now)
            t[$b]+="$(echo "$e - $s" | bc -l) "
            size[$b]=$(stat -c %s "$img")
        done
    done
    printf "%-16s %10s %14s %10s\n" builder "median s" "image bytes" "x apparent"
    declare -A med=()
    for b in "${builders[@]}"; do
        med[$b]=$(echo "${t[$b]}" | tr ' ' '\n' | grep . | median)
        printf "%-16s %10.3f %14d %10.3f\n" "$b" "${med[$b]}" "${size[$b]}" "$(echo "${size[$b]} / $apparent" | bc -l)"
    done
    for p in erofs erofs-noinline squashfs; do
        printf "faas / %-16s time %.2f  size %.3f\n" "$p" \
            "$(echo "${med[faas]} / ${med[$p]}" | bc -l)" "$(echo "${size[faas]} / ${size[$p]}" | bc -l)"
    done
    unset t size med
done
