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

# The cache volume may arrive owned by root (a host bind mount); say so at once instead of
# failing later when the first ONNX export or TensorRT engine is written there.
cache=${CCNET_CACHE_DIR:-}
if [ -n "$cache" ] && [ -d "$cache" ] && [ ! -w "$cache" ]; then
    echo "entrypoint: CCNET_CACHE_DIR=$cache is not writable by uid $(id -u);" \
        "exports and engines will not be cached" >&2
fi

exec "$@"
