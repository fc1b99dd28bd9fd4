#!/usr/bin/env bash
# kabar's release steps, one command each, so the release workflow
# (.github/workflows/release.yml) and a person at a terminal run the same thing.
#
#   scripts/release.sh versions [TAG]      Cargo.toml, Chart.yaml (version, appVersion) and
#                                          the Dockerfile agree, and with TAG (v1.2.3) if given
#   scripts/release.sh binaries [TARGET…]  build, strip-check and pack each target into dist/
#                                          and write dist/SHA256SUMS. Without TARGETs: every
#                                          supported target rustup has installed (the host's
#                                          if none is)
#   scripts/release.sh check               what CI runs on every change: the host binary
#                                          builds, runs --version, is stripped, its
#                                          SHA256SUMS verifies with sha256sum -c (and a
#                                          corrupted archive does not); the chart packages
#   scripts/release.sh chart               versions, then helm package into dist/
#   scripts/release.sh sums                (re)write dist/SHA256SUMS over dist/*.tar.gz and
#                                          dist/*.tgz
#
# KABAR_RELEASE_PROFILE picks the cargo profile (default: release; `check` uses
# release-check, the same stripped binary without LTO, to stay cheap). KABAR_DIST names the
# output folder (default: dist). The image is built and pushed by the workflow with
# `docker buildx` (see there); this machine has no Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

dist="${KABAR_DIST:-dist}"
profile="${KABAR_RELEASE_PROFILE:-release}"
chart=helm/kabar
# Targets a release ships: static musl binaries for Linux, and macOS.
supported_targets=(
  x86_64-unknown-linux-musl
  aarch64-unknown-linux-musl
  x86_64-apple-darwin
  aarch64-apple-darwin
)

die() {
  echo "release: $*" >&2
  exit 1
}

cargo_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1
}

# The cargo output folder of a profile: `dev` builds into debug, every other profile into
# its own name.
profile_dir() {
  if [ "$1" = dev ]; then echo debug; else echo "$1"; fi
}

cmd_versions() {
  local tag="${1:-}"
  local version chart_version app_version docker_version
  version="$(cargo_version)"
  chart_version="$(sed -n 's/^version: \(.*\)$/\1/p' $chart/Chart.yaml)"
  app_version="$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' $chart/Chart.yaml)"
  docker_version="$(sed -n 's/^ARG KABAR_VERSION=\(.*\)$/\1/p' Dockerfile)"
  [ -n "$version" ] || die "no version in Cargo.toml"
  for pair in "Chart.yaml version:$chart_version" "Chart.yaml appVersion:$app_version" \
    "Dockerfile KABAR_VERSION:$docker_version"; do
    [ "${pair##*:}" = "$version" ] || die "version drift: Cargo.toml has $version, ${pair%:*} has ${pair##*:}"
  done
  if [ -n "$tag" ] && [ "$tag" != "v$version" ]; then
    die "tag $tag does not match version $version (expected v$version)"
  fi
  echo "version $version: Cargo.toml, Chart.yaml and Dockerfile agree${tag:+, and so does tag $tag}"
}

host_target() {
  rustc -vV | sed -n 's/^host: //p'
}

installed_targets() {
  local installed=()
  if command -v rustup >/dev/null 2>&1; then
    mapfile -t installed < <(rustup target list --installed)
  fi
  local found=()
  for target in "${supported_targets[@]}"; do
    for have in "${installed[@]}"; do
      [ "$target" = "$have" ] && found+=("$target")
    done
  done
  if [ ${#found[@]} -eq 0 ]; then
    echo "release: no release target is installed (${supported_targets[*]}); building the host's" >&2
    found=("$(host_target)")
  fi
  printf '%s\n' "${found[@]}"
}

# An ELF binary is stripped when it has no symbol table; Mach-O keeps its dynamic symbols,
# so on macOS only `strip = true` in Cargo.toml vouches for it.
check_stripped() {
  local binary="$1"
  if head -c 4 "$binary" | grep -q $'\x7fELF'; then
    if readelf --section-headers --wide "$binary" | grep -qE '\.symtab|\.debug_'; then
      die "$binary is not stripped (symbol table or debug info present)"
    fi
    echo "$binary: stripped"
  else
    echo "$binary: not ELF, strip check skipped (strip = true in Cargo.toml)"
  fi
}

build_target() {
  local target="$1" version="$2"
  local args=(build --locked --profile "$profile")
  local out
  if [ "$target" = "$(host_target)" ]; then
    # The host's own build goes to target/PROFILE, shared with other cargo commands.
    out="target/$(profile_dir "$profile")"
  else
    args+=(--target "$target")
    out="target/$target/$(profile_dir "$profile")"
  fi
  echo "== building $target ($profile profile)" >&2
  cargo "${args[@]}" >&2
  local binary="$out/kabar"
  [ -x "$binary" ] || die "no binary at $binary"
  check_stripped "$binary" >&2
  if [ "$target" = "$(host_target)" ]; then
    # Only the host can run what it built.
    "$binary" --version >&2 || die "$binary --version failed"
  fi
  local name="kabar-$version-$target"
  local stage
  stage="$(mktemp -d)"
  mkdir "$stage/$name"
  cp "$binary" README.md "$stage/$name/"
  mkdir -p "$dist"
  # Reproducible archive metadata: fixed owner, sorted names, the commit's time.
  local mtime
  mtime="$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
    -C "$stage" -czf "$dist/$name.tar.gz" "$name" 2>/dev/null \
    || tar -C "$stage" -czf "$dist/$name.tar.gz" "$name" # bsdtar on macOS
  rm -rf "$stage"
  echo "$dist/$name.tar.gz"
}

cmd_sums() {
  [ -d "$dist" ] || die "no $dist folder"
  (
    cd "$dist"
    shopt -s nullglob
    local files=(*.tar.gz *.tgz)
    [ ${#files[@]} -gt 0 ] || die "nothing to checksum in $dist"
    if command -v sha256sum >/dev/null 2>&1; then
      sha256sum "${files[@]}" > SHA256SUMS
    else
      shasum -a 256 "${files[@]}" > SHA256SUMS # macOS
    fi
    cat SHA256SUMS
  )
}

cmd_binaries() {
  local version targets=("$@")
  version="$(cargo_version)"
  if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(installed_targets)
  fi
  for target in "${targets[@]}"; do
    build_target "$target" "$version"
  done
  cmd_sums
}

cmd_check() {
  profile="${KABAR_RELEASE_PROFILE:-release-check}"
  dist="$(mktemp -d)"
  trap 'rm -rf "$dist"' EXIT
  cmd_versions
  local archive
  archive="$(build_target "$(host_target)" "$(cargo_version)")"
  cmd_sums >/dev/null
  (cd "$dist" && sha256sum -c SHA256SUMS)
  # The archive holds the same binary, and it runs.
  local unpacked
  unpacked="$(mktemp -d)"
  tar -C "$unpacked" -xzf "$archive"
  "$unpacked"/kabar-*/kabar --version
  check_stripped "$(echo "$unpacked"/kabar-*/kabar)"
  rm -rf "$unpacked"
  # A corrupted archive must fail verification, or the check above proves nothing.
  printf 'x' >> "$archive"
  if (cd "$dist" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
    die "sha256sum -c accepted a corrupted archive"
  fi
  cmd_chart
  echo "release check passed"
}

cmd_chart() {
  cmd_versions "${1:-}"
  command -v helm >/dev/null 2>&1 || die "helm is missing (.ci/chart-tools installs it)"
  mkdir -p "$dist"
  helm lint --strict --quiet "$chart"
  helm package "$chart" --destination "$dist"
  local package="$dist/kabar-$(cargo_version).tgz"
  [ -f "$package" ] || die "helm package did not write $package"
  # The package carries the chart's own copies of the rules and dashboard, and the schema.
  local contents
  contents="$(tar -tzf "$package")"
  for file in kabar/values.schema.json kabar/files/kabar.rules.yml kabar/files/kabar-dashboard.json; do
    grep -qx "$file" <<<"$contents" || die "$package lacks $file"
  done
  echo "$package"
}

command="${1:-}"
shift || true
case "$command" in
  versions) cmd_versions "$@" ;;
  binaries) cmd_binaries "$@" ;;
  check) cmd_check "$@" ;;
  chart) cmd_chart "$@" ;;
  sums) cmd_sums "$@" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
