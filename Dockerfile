# push-operator: one image for the controller and the worker pods.
# The controller runs as uid 65532 (below); worker pods override runAsUser 0 with every
# capability dropped except DAC_READ_SEARCH (see docs/OPERATOR.md).
#
#   docker build -t push-operator:dev .        compiles in the builder stage (the default image)
#   buildah bud --target prebuilt --build-arg BINARY=push-operator -f Dockerfile DIR
#                                               packs a binary built outside, found in DIR: the e2e
#                                               cluster does this (no registry, no second compile)
# RUNTIME_BASE is any image with glibc (Debian 12's); the e2e cluster passes one it made from
# Debian packages.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/push-operator /out/push-operator

FROM ${RUNTIME_BASE} AS prebuilt
ARG BINARY=push-operator
COPY --chmod=0755 ${BINARY} /usr/local/bin/push-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/push-operator"]

FROM ${RUNTIME_BASE}
COPY --from=builder /out/push-operator /usr/local/bin/push-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/push-operator"]
