#!/usr/bin/env bash
# Open an autotune report in headless Chromium and save a screenshot of it.
#   scripts/report_screenshot.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
# WIDTH defaults to 1400 and HEIGHT to 2400 pixels: the screenshot is the top of the page, that
# tall. Needs Debian's `chromium` package (or CHROMIUM=/path/to/chrome). The browser runs with a
# fresh profile that is removed afterwards, and with its background network traffic turned off:
# the report needs none. Where pngquant is installed, the PNG is reduced to 256 colours (a third of
# the size; the text stays sharp).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
    exit 2
fi
report=$1 out=$2 width=${3:-1400} height=${4:-2400}
[ -f "$report" ] || { echo "$0: no such report: $report" >&2; exit 2; }
case "$width$height" in *[!0-9]*) echo "$0: WIDTH and HEIGHT are pixels, got $width x $height" >&2; exit 2;; esac
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
[ -n "$browser" ] || { echo "$0: no Chromium found; install it (apt-get install -y chromium) or set CHROMIUM" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
url="file://$(realpath "$report")"
out_abs="$(realpath -m "$out")"
sandbox=()
[ "$(id -u)" = 0 ] && sandbox=(--no-sandbox)  # Chromium refuses to run as root with its sandbox
"$browser" --headless "${sandbox[@]}" --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out_abs" --window-size="$width,$height" "$url" >"$profile/chromium.log" 2>&1 || {
    echo "$0: chromium failed:" >&2; tail -5 "$profile/chromium.log" >&2; exit 1; }
[ -s "$out_abs" ] || { echo "$0: chromium wrote no screenshot; its log:" >&2; tail -5 "$profile/chromium.log" >&2; exit 1; }
if command -v pngquant >/dev/null; then
    pngquant --force --skip-if-larger --strip --output "$out_abs" 256 "$out_abs" || [ $? = 98 ]  # 98: already smaller
fi
echo "wrote $out_abs (${width}x${height}, $(stat -c %s "$out_abs") bytes)"
