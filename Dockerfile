# syntax=docker/dockerfile:1
#
# kabar's container image: built with the Rust toolchain, run on distroless "cc" (glibc and
# libgcc only; TLS is rustls, so no OpenSSL) as the nonroot user (65532).
#
#   docker build --build-arg KABAR_GIT_REVISION="$(git rev-parse --short=12 HEAD)" -t kabar .
#   docker run --read-only --tmpfs /tmp -v kabar-state:/var/lib/kabar \
#     -v "$PWD/kabar.yaml:/etc/kabar/kabar.yaml:ro" -p 9095:9095 kabar
#
# The config must listen on 0.0.0.0:9095 and keep state_dir on the volume at /var/lib/kabar.

# Base images, pinned by digest so a rebuild starts from the bytes that were tested; the tag
# before the @ says what the digest is. Both are multi-arch indexes (linux/amd64, linux/arm64):
# the release workflow checks that before it builds. To move to newer images, look up the
# tags' current index digests and put them here:
#   docker buildx imagetools inspect docker.io/library/rust:1.95-bookworm --format '{{json .Manifest.Digest}}'
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot --format '{{json .Manifest.Digest}}'
# (or `crane digest IMAGE:TAG`). A build may override them: --build-arg BUILD_IMAGE=….
ARG BUILD_IMAGE=docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${BUILD_IMAGE} AS build
WORKDIR /src

# The release profile strips the binary (strip = true in Cargo.toml).
# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change. Stub sources stand in for kabar itself, whose artifacts are then deleted so the
# real build below cannot mistake the stubs for up-to-date output.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/kabar target/release/.fingerprint/kabar-* \
           target/release/deps/kabar-* target/release/deps/libkabar-* \
           target/release/build/kabar-*

# .git is not in the build context, so build.rs takes the revision from this argument.
ARG KABAR_GIT_REVISION=unknown
ENV KABAR_GIT_REVISION=${KABAR_GIT_REVISION}
COPY build.rs ./
COPY src ./src
# The built-in templates are compiled into the binary (include_str!); the image needs no
# template files at run time.
COPY templates ./templates
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/kabar --version \
 && mkdir -p /out/var/lib/kabar \
 && cp target/release/kabar /out/kabar

FROM ${RUNTIME_IMAGE}

ARG KABAR_GIT_REVISION=unknown
ARG KABAR_VERSION=0.1.0
LABEL org.opencontainers.image.title="kabar" \
      org.opencontainers.image.description="Prometheus Alertmanager receiver for Google Chat: threaded, rate-limited, durable delivery" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kabar-dev/kabar" \
      org.opencontainers.image.version="${KABAR_VERSION}" \
      org.opencontainers.image.revision="${KABAR_GIT_REVISION}"

COPY --from=build /out/kabar /usr/local/bin/kabar
# The state volume's mount point, owned by nonroot so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/var/lib/kabar /var/lib/kabar

USER 65532:65532
VOLUME ["/var/lib/kabar"]
EXPOSE 9095
ENTRYPOINT ["/usr/local/bin/kabar"]
CMD ["serve", "--config", "/etc/kabar/kabar.yaml"]
