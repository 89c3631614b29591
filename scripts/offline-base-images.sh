#!/usr/bin/env bash
# Builds the Dockerfile's two base images from Debian's package mirror and this host's Rust
# toolchain, for build hosts that reach no container registry (air-gapped sites, CI sandboxes):
#
#   scripts/offline-base-images.sh            # then: podman build --format docker --network host -t tributary:local .
#
# The images are tagged with exactly the names the Dockerfile's FROM lines use, so the Dockerfile
# itself is built unchanged. The Rust image mirrors the official one where the build needs it:
# Debian bookworm with a C/C++ toolchain, RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo.
# It needs root (debootstrap), debootstrap, and the toolchain the Dockerfile names installed by
# rustup. CA certificates under /usr/local/share/ca-certificates (a TLS-intercepting proxy's, say)
# go into the Rust image so cargo can reach crates.io from the build.
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${ENGINE:-podman}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rust_image=$(sed -n 's/^FROM \(rust:[^ ]*\) AS build$/\1/p' Dockerfile)
runtime_image=$(awk '/^FROM /{image=$2} END{print image}' Dockerfile)
rust_version=${rust_image#rust:}
rust_version=${rust_version%-bookworm}
[ -n "$rust_image" ] && [ "$runtime_image" = "debian:bookworm-slim" ] \
  || { echo "Dockerfile: expected FROM rust:<version>-bookworm AS build … FROM debian:bookworm-slim" >&2; exit 1; }

toolchain=$(rustup toolchain list | awk -v v="$rust_version" '$1 ~ "^"v"[.-]" || $1 ~ "^"v"$" {print $1; exit}')
if [ -z "$toolchain" ] && rustc --version | grep -q "^rustc $rust_version[. ]"; then
  toolchain=$(rustup show active-toolchain | awk '{print $1}')
fi
[ -n "$toolchain" ] || { echo "no Rust $rust_version toolchain here (rustup toolchain install $rust_version)" >&2; exit 1; }
toolchain_dir=$(readlink -f "$(rustup +"$toolchain" show home)/toolchains/$toolchain")

work=$(mktemp -d /var/tmp/tributary-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Drops what a container image does not need: package lists, docs, caches.
trim() {
  rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb \
    "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/*
}

echo "== debian:bookworm-slim from $mirror"
debootstrap --variant=minbase bookworm "$work/slim" "$mirror" >"$work/slim.log" || { tail -20 "$work/slim.log"; exit 1; }
trim "$work/slim"
tar -C "$work/slim" -c . | "$engine" import --change 'CMD ["bash"]' - "docker.io/library/debian:bookworm-slim"

echo "== $rust_image: Debian bookworm + toolchain $toolchain ($toolchain_dir)"
debootstrap --variant=minbase \
  --include=build-essential,pkg-config,ca-certificates,curl,git,libssl-dev,zlib1g-dev \
  bookworm "$work/rust" "$mirror" >"$work/rust.log" || { tail -20 "$work/rust.log"; exit 1; }
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$work/rust/usr/local/share/ca-certificates/"
  chroot "$work/rust" update-ca-certificates >/dev/null
fi
mkdir -p "$work/rust/usr/local/rustup/toolchains" "$work/rust/usr/local/cargo/bin"
cp -a "$toolchain_dir" "$work/rust/usr/local/rustup/toolchains/$toolchain"
rm -rf "$work/rust/usr/local/rustup/toolchains/$toolchain/share/doc"
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" >"$work/rust/usr/local/rustup/settings.toml"
# The toolchain's own binaries on PATH (no rustup proxy: nothing to download inside the build).
for bin in cargo rustc rustdoc; do
  ln -s "/usr/local/rustup/toolchains/$toolchain/bin/$bin" "$work/rust/usr/local/cargo/bin/$bin"
done
trim "$work/rust"
tar -C "$work/rust" -c . | "$engine" import \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  - "docker.io/library/$rust_image"

"$engine" run --rm "docker.io/library/$rust_image" cargo --version
echo "base images ready: docker.io/library/$rust_image, docker.io/library/debian:bookworm-slim"
