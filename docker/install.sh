#!/bin/sh
# Install the project into a virtual environment. This one script is the install step of
# docker/Dockerfile.cpu and docker/Dockerfile.gpu, and tests/deploy/test_docker.py runs it too,
# so the images and the test install the same way.
#
#   sh docker/install.sh [--torch-only] VENV [EXTRAS]
#
# Run it from the project root (the folder holding pyproject.toml). Every version comes from
# pyproject.toml: first torch, pinned there, from CCNET_TORCH_INDEX; then the project with
# EXTRAS (default serve,export) from the package index, where the installed torch already
# satisfies the pin, so pip never swaps in another build. --torch-only stops after torch (the
# images install it in a layer of its own, which code changes do not invalidate). VENV is
# created when missing.
#
# Environment:
#   CCNET_TORCH_INDEX  package index for torch; default https://download.pytorch.org/whl/cpu
#                      (the CPU build). Empty: pip's own configuration decides (index,
#                      find-links), e.g. a machine with a local CPU wheel.
#   CCNET_FIND_LINKS   a folder of wheels pip may take packages from (--find-links), e.g. an
#                      offline CPU torch wheel; ignored when it holds no wheel, so the images'
#                      default (an empty docker/wheels) installs exactly as without it.
#   CCNET_VENV_ARGS    more `python -m venv` flags (the GPU image: --system-site-packages, to see
#                      the TensorRT Python bindings of its base image).
#   CCNET_PIP_ARGS     more `pip install` flags (e.g. --no-compile).
#   PYTHON             the interpreter that creates VENV (default python3).
set -eu

torch_only=0
if [ "${1:-}" = "--torch-only" ]; then
    torch_only=1
    shift
fi
if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    echo "usage: sh docker/install.sh [--torch-only] VENV [EXTRAS]" >&2
    exit 2
fi
venv=$1
extras=${2:-serve,export}
torch_index=${CCNET_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
pip_args=${CCNET_PIP_ARGS:-}
find_links=${CCNET_FIND_LINKS:-}
venv_args=${CCNET_VENV_ARGS:-}

if [ ! -f pyproject.toml ]; then
    echo "install.sh: run me from the project root (no pyproject.toml in $(pwd))" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    # shellcheck disable=SC2086  # word splitting of the optional flags is wanted
    "${PYTHON:-python3}" -m venv $venv_args "$venv"
fi
python="$venv/bin/python"
if [ -n "$find_links" ] && ls "$find_links"/*.whl >/dev/null 2>&1; then
    echo "install.sh: wheels from ${find_links} first"
    pip_args="$pip_args --find-links $find_links"
fi

# The torch requirement exactly as pyproject.toml pins it (tomllib: Python 3.11+).
torch_requirement=$("$python" - <<'EOF'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
print(next(d for d in dependencies if re.match(r"torch\s*(==|\[|;|$)", d)))
EOF
)

echo "install.sh: ${torch_requirement} from ${torch_index:-pip's configuration}"
# shellcheck disable=SC2086
if [ -n "$torch_index" ]; then
    "$python" -m pip install --disable-pip-version-check $pip_args \
        --index-url "$torch_index" "$torch_requirement"
else
    "$python" -m pip install --disable-pip-version-check $pip_args "$torch_requirement"
fi
if [ "$torch_only" -eq 1 ]; then
    exit 0
fi

echo "install.sh: the project with [${extras}]"
# shellcheck disable=SC2086
"$python" -m pip install --disable-pip-version-check $pip_args ".[${extras}]"
case " $venv_args " in
    # the base image's own packages are visible there and are not ours to check
    *" --system-site-packages "*) ;;
    *) "$python" -m pip check ;;
esac
