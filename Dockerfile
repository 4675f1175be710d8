# syntax=docker/dockerfile:1
# One build, four images (docker build --target NAME):
#   controller  faultline-controller, non-root, distroless
#   observer    faultline-observer, non-root, distroless
#   agent       faultline-agent, root, distroless (it runs no other program)
#   cli         faultline (game days from CI, the demo shop's roles), non-root

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p faultline-controller -p faultline-agent -p faultline-observer -p faultline \
 && mkdir /out \
 && cp target/release/faultline-controller target/release/faultline-agent \
       target/release/faultline-observer target/release/faultline /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /out/faultline-controller /usr/local/bin/faultline-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/faultline-controller"]

FROM gcr.io/distroless/cc-debian12:nonroot AS observer
COPY --from=build /out/faultline-observer /usr/local/bin/faultline-observer
USER 65532:65532
EXPOSE 4317 4318 9464
ENTRYPOINT ["/usr/local/bin/faultline-observer"]

FROM gcr.io/distroless/cc-debian12:nonroot AS cli
COPY --from=build /out/faultline /usr/local/bin/faultline
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/faultline"]

# The agent changes the kernel of its node: root, with the capabilities the
# chart grants (NET_ADMIN, SYS_ADMIN, SYS_PTRACE, KILL), not privileged.
# It speaks netlink itself (nf_tables, traffic control): no iproute2.
FROM gcr.io/distroless/cc-debian12:nonroot AS agent
COPY --from=build /out/faultline-agent /usr/local/bin/faultline-agent
# Root by design (see above); the chart drops every other capability.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/faultline-agent"]
