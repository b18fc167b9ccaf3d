#!/usr/bin/env bash
# Wheels for a CUDA node that cannot reach PyPI (an HPC compute node, a borrowed GPU machine) and
# already has PyTorch, NumPy, h5py, numba, SciPy, click, tqdm, matplotlib and tensorboard:
# the project's five packages, built here, and the wheels of what such a node lacks, for its
# Python version. Run it where pip reaches PyPI, then copy DIR (and this checkout) to the node:
#
#     benchmarks/offline_wheels.sh DIR [PYTHON_VERSION] [PACKAGE ...]
#
# PYTHON_VERSION is the node's (default 3.12); PACKAGEs default to astropy (with pyerfa and its
# IERS data) and caustics (the ray tracer's reference in the benchmarks, with caskade and
# graphviz). GalSim is left out: only drawing synthetic or COSMOS sources needs it, not the GPU
# session (its wheel is 55 MB). On the node:
#
#     python3 -m pip install --no-index --no-deps --target /tmp/lens-site DIR/*.whl
#     export PYTHONPATH=/tmp/lens-site PATH=/tmp/lens-site/bin:$PATH
#     python3 benchmarks/gpu_session.py        # what `nox -s gpu` runs
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
version=${2:-3.12}
shift $(($# < 2 ? $# : 2))
packages=("$@")
if [[ ${#packages[@]} -eq 0 ]]; then
    packages=(astropy pyerfa astropy-iers-data caustics caskade graphviz)
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
rm -f "$dir"/lens*-*.whl  # the project's wheels are rebuilt from this checkout every time
python3 -m pip wheel -q --no-deps -w "$dir" \
    "$root/packages/lenscore" "$root/packages/lenssim" "$root/packages/lensprior" "$root/packages/lensrim" \
    "$root/apps/cli"
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
    platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" --platform any -d "$dir" "${packages[@]}"
ls -l "$dir"
du -sh "$dir"
