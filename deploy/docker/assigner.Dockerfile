# The acb-assigner daemon, as a small image: the binary and the C libraries it links (glibc,
# libgcc_s), nothing else: no shell, no package manager. deploy/docker/build.sh prepares the
# build context (rootfs/ and owned/) from built binaries and builds this; see it for the flags.
#
#   docker volume create acb-run
#   docker run -d --name acb-assigner --init -v acb-run:/run/acb acb-assigner:latest \
#     serve --listen unix:/run/acb/assigner.sock --gpus fake:2x80GiB      # SIMULATED GPUs
#   docker run -d --name acb-assigner --init --gpus all -v acb-run:/run/acb acb-assigner:latest  # real GPUs (NVIDIA toolkit)
#
# It runs as uid:gid 10001:10001 (acb). Its socket is /run/acb/assigner.sock (0660, 10001:10001),
# in a volume that job containers mount (read-only is enough) and reach as members of gid 10001
# with ACB_ASSIGNER_UID=10001 (the client image sets both). A new named volume mounted on
# /run/acb takes the image's directory, owned by 10001, which the daemon requires; a bind-mounted
# host directory must be owned by 10001 (chown 10001:10001 DIR; mode 0755 or stricter).
#
# BASE: scratch (the default: build.sh then puts glibc in rootfs/), or a glibc >= 2.34 image
# such as debian:bookworm-slim (build.sh --assigner-base IMAGE: rootfs/ then holds the binary only).
ARG BASE=scratch
FROM ${BASE}
COPY rootfs/ /
# The socket's directory and the lease state: the daemon's own (COPY --chown: no shell needed).
COPY --chown=10001:10001 owned/run-acb/ /run/acb/
COPY --chown=10001:10001 owned/state/ /var/lib/acb/
USER 10001:10001
ENV ACB_ASSIGNER=unix:/run/acb/assigner.sock
LABEL org.opencontainers.image.title="acb-assigner" \
      org.opencontainers.image.description="acb, the open GPU computing broker: the GPU assigner daemon" \
      org.opencontainers.image.licenses="Apache-2.0"
# SIGTERM drains: ShuttingDown to every session, up to 10 s for connections to close, the socket
# removed, exit 0. Give `docker stop` more than that (--stop-timeout 15 / stop_grace_period: 15s)
# and run with --init (compose: init: true) so that PID 1 is tini, which forwards the signal.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/acb-assigner", "status", "--assigner", "unix:/run/acb/assigner.sock"]
ENTRYPOINT ["/usr/local/bin/acb-assigner"]
# --gpus auto: every GPU NVML finds (libnvidia-ml.so.1, put in the container by the NVIDIA
# container toolkit); without a driver the daemon exits 1 saying so: pass --gpus fake:NxSIZE.
CMD ["serve", "--listen", "unix:/run/acb/assigner.sock", "--gpus", "auto", "--state-dir", "/var/lib/acb"]
