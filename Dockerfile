# push-operator: one image for the controller and the worker pods.
# The controller runs as uid 65532 (below); worker pods override runAsUser 0 with every
# capability dropped except DAC_READ_SEARCH (see docs/OPERATOR.md).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/push-operator /out/push-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/push-operator /usr/local/bin/push-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/push-operator"]
