#!/usr/bin/env bash
# Installs what tandem needs on a fresh Debian 12 machine. Idempotent: a second run
# checks and returns quickly. Usage: scripts/install-deps.sh [--clients | --python | --slurm]
#   (no flag)  apt packages for building, testing and the demo corpus
#   --clients  also the Python virtual environment (.venv) with the official openai and
#              ollama clients the gateway tests use and the Kubernetes validators of
#              test_deploy (make test)
#   --python   also the reference peers in .venv (PyTorch from Debian's python3-torch,
#              transformers, safetensors, tokenizers) and the clients
#   --slurm    also Debian's Slurm daemons and munge, for tests/e2e/test_slurm.sh and
#              scripts/slurm-local.sh (not part of make test's install: installing them
#              enables their system services; without them test_slurm is skipped)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libzmq3-dev
          libprotobuf-c-dev protobuf-c-compiler libopenblas-openmp-dev libdnnl-dev libcjson-dev
          libmicrohttpd-dev zlib1g-dev libutf8proc-dev fortunes fortunes-zh
          procps util-linux iproute2 systemd gawk curl clang-format)
PY_APT_PKGS=(python3 python3-venv python3-torch python3-numpy)

missing_apt() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

apt_install() {
    local need
    need=$(missing_apt "$@")
    [ -z "$need" ] && return 0
    echo "install-deps: installing apt packages:" $need
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo > /dev/null || {
            echo "install-deps: these packages are missing and installing them needs root:" $need >&2
            echo "install-deps: run this as root (or install sudo), then run make again" >&2
            exit 1
        }
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
}

apt_install "${APT_PKGS[@]}"

make_venv() {
    # Debian's python3-torch lives in the system interpreter's site-packages, so the venv
    # is made from /usr/bin/python3 with --system-site-packages.
    if [ ! -x .venv/bin/python ]; then
        /usr/bin/python3 -m venv --system-site-packages .venv
    fi
    if ! .venv/bin/python -c 'import openai, ollama' 2>/dev/null; then
        echo "install-deps: installing the openai and ollama clients into .venv"
        .venv/bin/pip install -q -r tests/e2e/requirements-clients.txt
    fi
    if ! .venv/bin/python -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
        echo "install-deps: installing the Kubernetes validators into .venv"
        .venv/bin/pip install -q -r tests/e2e/requirements-deploy.txt
    fi
}

if [ "${1:-}" = "--clients" ]; then
    apt_install python3 python3-venv
    make_venv
fi

if [ "${1:-}" = "--slurm" ]; then
    apt_install slurmctld slurmd slurm-client munge
fi

if [ "${1:-}" = "--python" ]; then
    apt_install "${PY_APT_PKGS[@]}"
    make_venv
    if ! .venv/bin/python -c 'import transformers, safetensors, tokenizers, jinja2' 2>/dev/null; then
        echo "install-deps: installing Python reference packages into .venv"
        .venv/bin/pip install -q -r tests/reference/requirements.txt
    fi
    # peft (make interop's LoRA case, the LoRA fixture): --no-deps, or pip would replace
    # Debian's torch (1.13.0a0 does not satisfy peft's torch>=1.13.0) with a CUDA build
    if ! .venv/bin/python -c 'import peft' 2>/dev/null; then
        echo "install-deps: installing peft into .venv"
        .venv/bin/pip install -q --no-deps peft==0.13.2 accelerate==0.34.2
    fi
fi
