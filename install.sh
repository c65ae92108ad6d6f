#!/usr/bin/env bash
# Builds s3bk in release mode and installs the binary, its man pages and shell completions.
#   ./install.sh [--prefix DIR]     (default prefix: /usr/local, or ~/.local when not root)
set -euo pipefail
cd "$(dirname "$0")"
prefix=$([ "$(id -u)" = 0 ] && echo /usr/local || echo "$HOME/.local")
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cargo build --release --locked
target="${CARGO_TARGET_DIR:-target}/release/s3bk"
install -D -m 0755 "$target" "$prefix/bin/s3bk"
"$prefix/bin/s3bk" man --dir "$prefix/share/man/man1" >/dev/null
mkdir -p "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
"$prefix/bin/s3bk" completions bash > "$prefix/share/bash-completion/completions/s3bk"
"$prefix/bin/s3bk" completions zsh > "$prefix/share/zsh/site-functions/_s3bk"
"$prefix/bin/s3bk" completions fish > "$prefix/share/fish/vendor_completions.d/s3bk.fish"
echo "installed $prefix/bin/s3bk"
