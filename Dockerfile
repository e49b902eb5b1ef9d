# s3vol image: one binary for the controller (runs as non-root) and the node plugin
# (runs privileged as root; see deploy/kubernetes/base/node.yaml).
# Build: docker build --build-arg S3VOL_GIT_COMMIT=$(git rev-parse --short HEAD) -t s3vol .

FROM rust:1.95-bookworm AS build
ARG S3VOL_GIT_COMMIT=unknown
ENV S3VOL_GIT_COMMIT=${S3VOL_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p s3vol && strip target/release/s3vol

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/s3vol /usr/bin/s3vol
USER 65532:65532
ENTRYPOINT ["/usr/bin/s3vol"]
CMD ["--help"]
