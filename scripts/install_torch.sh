#!/bin/sh
# Installs the torch build this machine needs into a virtual environment, before the project (the Makefile's
# `venv` target calls it), and prints which build it installed.
#
#   scripts/install_torch.sh PYTHON SPEC [INDEX]        e.g. scripts/install_torch.sh .venv/bin/python torch==2.13.0
#
# The build, by the first rule that applies:
#   1. INDEX given (the Makefile's TORCH_INDEX): SPEC from that index, e.g. a CUDA build of your choice.
#   2. Not Linux (macOS, Windows): SPEC from PyPI, whose builds there carry no CUDA.
#   3. Linux with an NVIDIA GPU (`nvidia-smi -L` works): SPEC from PyPI, its default Linux build includes CUDA.
#   4. Linux without one, and pip finds a CPU wheel of SPEC without an index (a find-links folder): that wheel.
#   5. Linux without one otherwise: SPEC from the CPU wheel index (TORCH_CPU_INDEX, default
#      https://download.pytorch.org/whl/cpu), ~200 MB instead of several GB of CUDA libraries nobody uses.
# A torch already importable by PYTHON is kept as it is. Environment: NVIDIA_SMI (the command probed in rule 3),
# TORCH_CPU_INDEX, and TORCH_DRY_RUN=1 (print the choice and the pip command, install nothing; for the tests).
set -eu
python=$1
spec=$2
index=${3:-}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
nvidia_smi=${NVIDIA_SMI:-nvidia-smi}
dry=${TORCH_DRY_RUN:-}

report() {
    "$python" -W ignore -c 'import torch; cuda = torch.version.cuda; print(f"torch {torch.__version__}: the " + (f"CUDA {cuda} build" if cuda else "CPU build") + f" ({torch.__file__})")'
}

if [ -z "$dry" ] && "$python" -c "import torch" 2>/dev/null; then
    printf 'torch: kept the one already installed: '
    report
    exit 0
fi

if [ -n "$index" ]; then
    reason="TORCH_INDEX=$index"
    set -- "$spec" --index-url "$index"
elif [ "$(uname -s)" != Linux ]; then
    reason="$(uname -s): PyPI's build"
    set -- "$spec"
elif "$nvidia_smi" -L >/dev/null 2>&1; then
    reason="an NVIDIA GPU answers nvidia-smi: PyPI's CUDA build"
    set -- "$spec"
else
    # Which version pip would take from local wheels alone (find-links), without downloading anything.
    local_version=$("$python" -m pip install --dry-run --no-index --no-deps --ignore-installed --quiet --report - \
        "$spec" 2>/dev/null | "$python" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' \
        2>/dev/null || true)
    case "$local_version" in
        *+cpu)
            reason="no NVIDIA GPU: the local CPU wheel torch $local_version"
            set -- "torch==$local_version" ;;
        *)
            reason="no NVIDIA GPU and no local CPU wheel: the CPU wheel index"
            set -- "$spec" --index-url "$cpu_index" ;;
    esac
fi

echo "torch: $reason"
echo "+ $python -m pip install -q $*"
if [ -n "$dry" ]; then
    exit 0
fi
"$python" -m pip install -q "$@"
report
