#!/bin/sh
# Entry point of the ccnet images.
#
#   docker run IMAGE                          -> ccnet serve (settings from CCNET_* variables)
#   docker run IMAGE --backend onnxruntime    -> ccnet serve --backend onnxruntime
#   docker run IMAGE ccnet export onnx ...    -> any other command runs as given
#
# `exec` replaces this shell, so the server runs as PID 1 and `docker stop` (SIGTERM) reaches
# uvicorn directly: it finishes in-flight requests, then exits.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- ccnet serve "$@"
fi

# A models folder is the model set (`ccnet serve --model-dir`: an empty one serves nothing).
# The image's promise is "the demo models when /models is empty", so with no model file there
# (and no CCNET_MODELS) the folder is left out and the bundled demo models are served; copy
# models in and restart the container to serve them (and follow the folder from then on).
dir=${CCNET_MODEL_DIR:-}
if [ "$1" = ccnet ] && [ "${2:-}" = serve ] && [ -n "$dir" ] && [ -z "${CCNET_MODELS:-}" ]; then
    found=$(find "$dir" -maxdepth 1 ! -name '.*' \( -name '*.pt' -o -name '*.onnx' \
        -o -name '*.engine' -o -name '*.plan' \) 2>/dev/null | head -n 1)
    if [ -z "$found" ]; then
        echo "entrypoint: $dir holds no model file; serving the bundled demo models" >&2
        unset CCNET_MODEL_DIR
    fi
fi

# The cache volume may arrive owned by root (a host bind mount); say so at once instead of
# failing later when the first ONNX export or TensorRT engine is written there.
cache=${CCNET_CACHE_DIR:-}
if [ -n "$cache" ] && [ -d "$cache" ] && [ ! -w "$cache" ]; then
    echo "entrypoint: CCNET_CACHE_DIR=$cache is not writable by uid $(id -u);" \
        "exports and engines will not be cached" >&2
fi

exec "$@"
