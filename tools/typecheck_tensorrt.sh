#!/usr/bin/env bash
# Type-check the TensorRT backend against NVIDIA's tensorrt-stubs with pyright (TensorRT itself cannot be
# installed here). mypy cannot read those stubs (syntax errors such as a parameter named 'in'); pyright's
# tolerant parser can, and catches unknown attributes and bad calls.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WORK=$VENV/typecheck
STUBS_VERSION=10.13.0.35.1
PYRIGHT_VERSION=1.1.414
mkdir -p "$WORK"
if [ ! -d "$WORK/stubs/tensorrt" ]; then
  "$VENV/bin/pip" install -q --no-deps --target "$WORK/stubs" "tensorrt-stubs==$STUBS_VERSION"
fi
if [ ! -x "$WORK/node/node_modules/.bin/pyright" ]; then
  npm install --silent --no-audit --no-fund --prefix "$WORK/node" "pyright@$PYRIGHT_VERSION" >/dev/null
fi
# the package as it installs (converter.plugins lives in plugins/), so imports resolve like at run time
rm -rf "$WORK/site"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --target "$WORK/site" . >/dev/null
SITE=$WORK/site/converter/plugins
cat > "$WORK/pyrightconfig.json" <<JSON
{
  "include": ["site/converter/plugins/tensorrt"],
  "extraPaths": ["site", "stubs", "$(cd "$VENV" && pwd)/lib/python3.11/site-packages"],
  "pythonVersion": "3.11",
  "typeCheckingMode": "basic",
  "reportMissingModuleSource": "none",
  "reportAttributeAccessIssue": "error",
  "reportCallIssue": "error",
  "reportArgumentType": "error",
  "reportOptionalMemberAccess": "error"
}
JSON
echo "pyright $PYRIGHT_VERSION over the TensorRT backend against tensorrt-stubs $STUBS_VERSION:"
"$WORK/node/node_modules/.bin/pyright" -p "$WORK/pyrightconfig.json"
