#!/usr/bin/env bash
# The C and Python clients against the Rust client through one hub, in one
# run (BENCHMARKS.md, "Language bindings"; issue #19): socket and shm at
# 64 B and 1 KiB, publisher -> ipchubd -> subscriber, each end a separate
# process of the same client.
#
# Builds, all in release and into a temporary directory except cargo's
# own target directory (CARGO_TARGET_DIR, default target/):
#   ipchubd, ipchub-bench, libipchub.so.0 (cargo build --release);
#   bindings/c/bench/ipchub_bench_client.c with gcc -O2 against it;
#   the Python module with maturin (wheel installed with pip --target).
# Needs: gcc, python3 with maturin and pip. Extra arguments go to
# ipchub-bench (e.g. --messages 500000 --repetitions 5 --json).
# Usage: bench/bindings.sh [ipchub-bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
export CARGO_TARGET_DIR=$target
dir=$(mktemp -d /tmp/ipchub-bindings-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

echo "building ipchubd, ipchub-bench and libipchub (release)..." >&2
cargo build --release --locked -q -p ipchub --bin ipchubd --bin ipchub-bench
cargo build --release --locked -q -p ipchub-c

mkdir -p "$dir/lib" "$dir/include" "$dir/bin" "$dir/site"
cp "$target/release/libipchub_c.so" "$dir/lib/libipchub.so.0"
ln -s libipchub.so.0 "$dir/lib/libipchub.so"
cp bindings/c/include/ipchub.h "$dir/include/"
echo "compiling the C client (gcc -O2)..." >&2
gcc -O2 -Wall -Wextra -Werror -o "$dir/bin/ipchub_bench_client" \
    bindings/c/bench/ipchub_bench_client.c -I"$dir/include" -L"$dir/lib" -lipchub \
    -Wl,-rpath,"$dir/lib"

echo "building the Python module (maturin, release)..." >&2
python3 -m maturin build --release --locked -q \
    --manifest-path bindings/python/Cargo.toml --out "$dir/wheels" -i python3 >&2
python3 -m pip install -q --no-index --no-deps --target "$dir/site" "$dir"/wheels/*.whl

"$target/release/ipchub-bench" --bindings \
    --transports socket,shm --sizes 64,1K \
    --c-client "$dir/bin/ipchub_bench_client" \
    --python-client bindings/python/bench_client.py --python-path "$dir/site" \
    "$@"
