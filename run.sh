#!/usr/bin/env bash
# One-stop set-up and entry point: creates .venv (CPU torch 2.13.0 first, so no CUDA build is pulled),
# installs newtonrl with its dev extras, then runs the main job (demo) or the test suite (test).
#   bash run.sh demo [extra newtonrl train args]   # main job on the embedded default config
#   bash run.sh test [extra pytest args]           # test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=${NEWTONRL_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.newtonrl-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
what=${1:-demo}
shift || true
case "$what" in
  demo) exec "$VENV/bin/newtonrl" train configs/demo.yaml "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo|test [args]" >&2; exit 2 ;;
esac
