#!/usr/bin/env bash
# A benchmark longer than one call of the GPU machine (10 minutes), run across two calls made back
# to back (the machine keeps /tmp, and processes in their own session, while it stays warm):
#
#   benchmarks/background.sh start DIR SECONDS -- COMMAND [ARGS...]
#       starts COMMAND in a session of its own (it outlives the call), its output in DIR/run.log,
#       and waits up to SECONDS for it to end
#   benchmarks/background.sh wait DIR SECONDS
#       waits up to SECONDS more
#
# Each copies the files directly under DIR (not its folders) to $OUT, where the call brings them
# back, and prints the log's last lines. Exit 0: COMMAND ended (its exit status is in DIR/exit);
# 3: it still runs (call `wait` within the warm window); 2: bad usage.
set -uo pipefail
usage() { echo "usage: $0 start DIR SECONDS -- COMMAND [ARGS...] | wait DIR SECONDS" >&2; exit 2; }
[ $# -ge 3 ] || usage
verb=$1 dir=$2 seconds=$3
shift 3
case "$verb" in
  start)
    [ "${1:-}" = "--" ] && [ $# -ge 2 ] || usage
    shift
    mkdir -p "$dir"
    rm -f "$dir/exit"
    setsid bash -c 'cd "$1" && shift && "$@"; echo $? > "$0/exit"' "$dir" "$PWD" "$@" > "$dir/run.log" 2>&1 < /dev/null &
    ;;
  wait) [ -d "$dir" ] || { echo "$dir does not exist: nothing was started on this machine" >&2; exit 2; } ;;
  *) usage ;;
esac
end=$((SECONDS + seconds))
while [ ! -f "$dir/exit" ] && [ $SECONDS -lt $end ]; do sleep 5; done
if [ -n "${OUT:-}" ]; then
  find "$dir" -maxdepth 1 -type f -exec cp {} "$OUT/" \;
fi
tail -n 40 "$dir/run.log"
if [ -f "$dir/exit" ]; then
  echo "ended with exit status $(cat "$dir/exit")"
  exit 0
fi
echo "still running after $seconds s: call '$0 wait $dir SECONDS' next"
exit 3
