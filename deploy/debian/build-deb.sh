#!/usr/bin/env bash
# Builds the Debian package target/debian/volmig_<version>-1_<arch>.deb with
# cargo-deb (pinned in deploy/setup-tests.sh). Generates what the package
# installs besides the binary from the binary itself: man pages, bash/zsh/fish
# completions, and /etc/volmig/{node,controller}.toml (every key commented out
# at its default).
#
#   deploy/debian/build-deb.sh                  # cargo build --release, then package
#   deploy/debian/build-deb.sh --binary PATH    # package an existing build (CI: the
#                                               # debug binary the tests already built)
#   --fast                                      # lighter compression (CI)
# Prints the path of the .deb on its last line.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
binary=""
fast=()
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --fast) fast=(--fast); shift ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    cargo build --locked --release --bin volmig >&2
    binary=target/release/volmig
fi

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
# cargo-deb strips only what it builds itself; a debug build is ~200 MB with
# its symbols and ~30 MB without.
strip --strip-unneeded -o "$assets/volmig" "$binary"
chmod 755 "$assets/volmig"
# A clean environment: VOLMIG_* variables must not leak into the examples.
env -i "$assets/volmig" node --example-config >"$assets/node.toml"
env -i "$assets/volmig" controller --example-config >"$assets/controller.toml"
"$assets/volmig" man "$assets/man"
gzip -9n "$assets"/man/*.1
"$assets/volmig" completions bash >"$assets/completions/volmig"
"$assets/volmig" completions zsh >"$assets/completions/_volmig"
"$assets/volmig" completions fish >"$assets/completions/volmig.fish"

mkdir -p target/debian
cargo deb --no-build --no-strip "${fast[@]}" --output target/debian/ >&2
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
deb=$(ls -t target/debian/volmig_"${version}"*.deb | head -n 1)
echo "$top/$deb"
