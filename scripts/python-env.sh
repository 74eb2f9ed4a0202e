#!/usr/bin/env bash
# Creates (once) the Python environment the interop tests run in, with the versions of torch,
# transformers, compressed-tensors, safetensors and numpy whose sources tests/interop/README.md
# was checked against, and prints its python path (the only line on stdout).
#
#   python=$(bash scripts/python-env.sh)
#
# SQ_PYTHON_ENV: where the venv lives (default ~/.cache/shardquant/pyenv); SQ_PYTHON: the
# interpreter that creates it (default python3; compressed-tensors 0.20 needs Python >= 3.11).
# Packages come from PyPI through pip's ordinary configuration. A stamp file holding the pins
# makes a second call return at once; changing a pin below reinstalls.
set -euo pipefail

pins=(
  torch==2.15.0
  transformers==5.23.0
  compressed-tensors==0.20.0
  safetensors==0.8.0
  numpy==2.4.6
)

env_dir=${SQ_PYTHON_ENV:-$HOME/.cache/shardquant/pyenv}
stamp="$env_dir/.shardquant-pins"
want=$(printf '%s\n' "${pins[@]}")

ready() { [[ -x "$env_dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; }

if ready; then
  echo "$env_dir/bin/python"
  exit 0
fi

mkdir -p "$(dirname "$env_dir")"
# ctest may start two interop tests at once: one sets up, the other waits for it.
exec 9>"$env_dir.lock"
flock 9
if ready; then
  echo "$env_dir/bin/python"
  exit 0
fi

python=${SQ_PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "python-env: $python is missing or older than 3.11 (compressed-tensors 0.20 needs 3.11);" \
       "set SQ_PYTHON to a newer interpreter" >&2
  exit 1
fi

echo "python-env: setting up $env_dir (${pins[*]}); the first time downloads a few GB" >&2
if [[ ! -x "$env_dir/bin/python" ]]; then
  "$python" -m venv "$env_dir" >&2
fi
"$env_dir/bin/python" -m pip install --quiet --upgrade pip >&2
"$env_dir/bin/python" -m pip install --quiet "${pins[@]}" >&2

# What is importable must be what was pinned (a stale package could shadow a pin).
"$env_dir/bin/python" - "${pins[@]}" >&2 <<'EOF'
import importlib.metadata as md
import sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    got = md.version(name)
    if got != version:
        sys.exit(f"python-env: {name} is {got}, expected {version}")
import compressed_tensors, numpy, safetensors, torch, transformers  # noqa: E401,F401
EOF

printf '%s\n' "${pins[@]}" >"$stamp"
echo "$env_dir/bin/python"
