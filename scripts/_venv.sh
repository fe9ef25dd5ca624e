# Shared by scripts/serve and scripts/test: make (once) and refresh the virtual
# environment in .venv, installing the package with the given extras.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HOMESERVER_VENV:-$root/.venv}
extras=${1:-}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp=$venv/.installed-$extras
if [[ ! -f $stamp || $root/pyproject.toml -nt $stamp ]]; then
  "$venv/bin/pip" install -q -e "$root${extras:+[$extras]}"
  touch "$stamp"
fi
