# s3vol image: one binary for the controller (runs as non-root), the node plugin (runs
# privileged as root) and the mount pods (run unprivileged as 65532); see deploy/kubernetes/base.
# Build: docker build --build-arg S3VOL_GIT_COMMIT=$(git rev-parse --short HEAD) -t s3vol .
#
# Two build arguments exist for offline tests (scripts/images.sh), defaults for users:
#   BASE_IMAGE    the runtime base (default debian:bookworm-slim)
#   S3VOL_BINARY  "build" compiles in the rust stage; "context" takes S3VOL_BINARY_PATH
#                 (default target/release/s3vol) from the build context, built beforehand
ARG BASE_IMAGE=debian:bookworm-slim
ARG S3VOL_BINARY=build
ARG S3VOL_BINARY_PATH=target/release/s3vol

FROM rust:1.95-bookworm AS build
ARG S3VOL_GIT_COMMIT=unknown
ENV S3VOL_GIT_COMMIT=${S3VOL_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p s3vol && strip target/release/s3vol \
 && mkdir -p /out && cp target/release/s3vol /out/s3vol

FROM scratch AS context
ARG S3VOL_BINARY_PATH
COPY ${S3VOL_BINARY_PATH} /out/s3vol

FROM ${S3VOL_BINARY} AS binary

FROM ${BASE_IMAGE}
RUN if ! [ -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=binary /out/s3vol /usr/bin/s3vol
USER 65532:65532
ENTRYPOINT ["/usr/bin/s3vol"]
CMD ["--help"]
