#!/usr/bin/env bash
# Installs what the project needs outside Python, skipping whatever is already in place:
#   bootstrap.sh apt PACKAGE...     Debian packages (as root, or through sudo)
#   bootstrap.sh go MODULE@VERSION  a Go tool into .tools/bin (GOBIN)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:?usage: bootstrap.sh apt PACKAGE... | go MODULE@VERSION...}
shift

case "$mode" in
apt)
  missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && exit 0
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Package post-install scripts may start daemons (nginx, redis, postgres, prometheus);
  # the project starts its own instances on their own ports, so stop the system ones.
  for service in nginx redis-server postgresql prometheus; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
      $sudo systemctl stop "$service" || true
    fi
    $sudo service "$service" stop >/dev/null 2>&1 || true
  done
  ;;
go)
  export GOBIN="$root/.tools/bin"
  mkdir -p "$GOBIN"
  for spec in "$@"; do
    module=${spec%@*}
    version=${spec##*@}
    binary="$GOBIN/$(basename "$module")"
    stamp="$binary.version"
    if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
      continue
    fi
    echo "bootstrap: go install $spec"
    go install "$spec"
    echo "$version" > "$stamp"
  done
  ;;
*)
  echo "bootstrap.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac
