#!/usr/bin/env bash
# Installs what the project needs outside Python, skipping whatever is already in place:
#   bootstrap.sh apt PACKAGE...     Debian packages (as root, or through sudo)
#   bootstrap.sh go [NAME=]MODULE@VERSION...  Go tools into .tools/bin (as NAME when given);
#                                  GO_LDFLAGS, when set, is passed to `go install -ldflags`
#   bootstrap.sh npm NAME=PACKAGE@VERSION...  a prebuilt binary an npm package ships (its bin
#                                  NAME) into .tools/bin, for tools slow to build from source
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:?usage: bootstrap.sh apt PACKAGE... | go MODULE@VERSION... | npm NAME=PACKAGE@VERSION...}
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
  bin="$root/.tools/bin"
  mkdir -p "$bin"
  for spec in "$@"; do
    name=""
    if [[ "$spec" == *=* ]]; then
      name=${spec%%=*}
      spec=${spec#*=}
    fi
    module=${spec%@*}
    version=${spec##*@}
    [ -n "$name" ] || name=$(basename "$module")
    binary="$bin/$name"
    stamp="$binary.version"
    if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$spec ${GO_LDFLAGS:-}" ]; then
      continue
    fi
    echo "bootstrap: go install $spec"
    scratch=$(mktemp -d)
    GOBIN="$scratch" go install ${GO_LDFLAGS:+-ldflags "$GO_LDFLAGS"} "$spec"
    mv "$scratch/$(basename "$module")" "$binary"
    rmdir "$scratch"
    echo "$spec ${GO_LDFLAGS:-}" > "$stamp"
  done
  ;;
npm)
  bin="$root/.tools/bin"
  mkdir -p "$bin"
  for spec in "$@"; do
    name=${spec%%=*}
    package=${spec#*=}
    binary="$bin/$name"
    stamp="$binary.version"
    if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "npm $package" ]; then
      continue
    fi
    echo "bootstrap: npm install $package"
    prefix="$root/.tools/npm/$name"
    rm -rf "$prefix"
    npm install --silent --no-audit --no-fund --prefix "$prefix" "$package"
    rm -f "$binary"
    ln -s "$prefix/node_modules/.bin/$name" "$binary"
    "$binary" --version >/dev/null
    echo "npm $package" > "$stamp"
  done
  ;;
*)
  echo "bootstrap.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac
