#!/usr/bin/env bash
# Builds the Debian package of keyveil and checks it: a release build (about 7 minutes on 2 cores
# when nothing is cached), the man pages and shell completions generated from the clap
# definitions by the binary itself, then `cargo deb --no-build`. With --check, the package is
# unpacked into a temporary root (dpkg -x: no root needed, nothing touches the system) and
# `keyveil demo` is run from there.
#
# Needs cargo-deb (`cargo install --locked cargo-deb`) and dpkg-deb.
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyveil-target}"
check=0
[ "${1:-}" = "--check" ] && check=1

command -v cargo-deb >/dev/null || {
  echo "cargo-deb is missing" >&2
  echo "hint: cargo install --locked cargo-deb" >&2
  exit 2
}
cargo build --release --locked -p keyveil
bin="$CARGO_TARGET_DIR/release/keyveil"
gen=crates/keyveil/deb
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$bin" man --dir "$gen/man"
"$bin" completions bash >"$gen/completions/keyveil.bash"
"$bin" completions zsh >"$gen/completions/_keyveil"
"$bin" completions fish >"$gen/completions/keyveil.fish"
deb=$(cargo deb -p keyveil --no-build --locked | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb gave no package ($deb)" >&2; exit 1; }

if [ "$check" = 1 ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  dpkg-deb --info "$deb" >/dev/null
  dpkg-deb -x "$deb" "$root"
  for f in usr/bin/keyveil usr/share/bash-completion/completions/keyveil \
    usr/share/zsh/vendor-completions/_keyveil usr/share/fish/vendor_completions.d/keyveil.fish; do
    [ -s "$root/$f" ] || { echo "the package lacks $f" >&2; exit 1; }
  done
  ls "$root"/usr/share/man/man1/keyveil.1* >/dev/null || { echo "the package lacks the man page" >&2; exit 1; }
  # The demo from the unpacked binary, on a throwaway home of its own, off any terminal.
  mkdir -p "$root/home"
  env -u KEYVEIL_HOME -u XDG_DATA_HOME HOME="$root/home" setsid -w "$root/usr/bin/keyveil" demo </dev/null
  echo "package checked: binary, man pages, completions; keyveil demo passed from it" >&2
fi
echo "$deb"
