#!/usr/bin/env bash
# Unpacks into .deps/usr the libraries a GPU machine without Debian's packages or network lacks:
# PCRE2 (the tokenizer) from Debian's packages, and cpp-httplib's single header (the server) from
# Debian's source tarball. `make gpu-build` passes .deps/usr to CMake when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.deps
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 >/dev/null)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest"; done
version=0.11.4
curl -sfL "http://deb.debian.org/debian/pool/main/c/cpp-httplib/cpp-httplib_${version}+ds.orig.tar.xz" |
  tar -xJ -C "$tmp"
install -D -m 644 "$(find "$tmp" -name httplib.h | head -1)" "$dest/usr/include/httplib.h"
echo "unpacked into $dest: $(ls "$dest/usr/include")"
