#!/bin/bash
# minilora paper on one GPU, as run for docs/paper.md (from the repository root, OUT set by the device):
#   bench/paper_gpu.sh search   # --quick on CuPy (does the backend work?), then the search, 14 processes
#   bench/paper_gpu.sh full     # the full run, timed
# Everything that comes back is under $OUT: logs, search.json, and the run folders as tarballs.
set -u
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
timed() {  # timed LOG SECONDS COMMAND...: run it with a time limit, append its wall time and exit status to LOG
    local log=$1 limit=$2 start=$(date +%s%N); shift 2
    timeout "$limit" "$@" > "$log" 2>&1
    echo "exit $? after $(( ($(date +%s%N) - start) / 1000000 )) ms: $*" >> "$log"
}
case $1 in
search)
    timed "$OUT/quick.log" 150 python -m minilora.paper --quick --seeds 1 --backend cupy --out /tmp/paper-quick
    tar czf "$OUT/quick.tgz" -C /tmp --exclude='*.safetensors' paper-quick
    timed "$OUT/search.log" 270 python -m minilora.paper --search --backend cupy --out /tmp/paper-search
    cp /tmp/paper-search/search.json "$OUT/" ;;
full)
    timed "$OUT/full.log" 520 python -m minilora.paper --backend cupy --out /tmp/paper
    tar czf "$OUT/full.tgz" -C /tmp --exclude='*.safetensors' paper ;;
esac
