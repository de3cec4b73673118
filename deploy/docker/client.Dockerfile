# A base for job images: libacb (/usr/local/lib/libacb.so, /usr/local/include/acb.h), the Python
# package acb_broker with agarun and gpu_assigner, and the acb-assigner CLI (status, alloc,
# demo-job), all from the binary wheel, in a virtual environment at /opt/acb that is first on
# PATH. deploy/docker/build.sh prepares the context (wheel/, include/) and builds this.
#
#   FROM acb-client:latest
#   COPY train.py /home/job/
#   CMD ["agarun", "--job", "train", "--", "python", "train.py"]
#
# Jobs run as `job` (uid 1000), a member of group acb (gid 10001), the assigner's group, so
# they may connect to its 0660 socket; ACB_ASSIGNER_UID=10001 tells the clients the socket's
# owner (the assigner image's user) is the assigner, not an impostor. Another uid works the same
# with `--user UID --group-add 10001`. Mount the assigner's socket volume on /run/acb (`:ro` is
# enough: connecting needs no write access to the file system).
#
# BASE: any Debian-like image with glibc >= 2.34 (the wheel is manylinux_2_34). Python 3 with
# venv is installed with apt if the base lacks it; CI passes a base that has it (no network):
# deploy/docker/debian-rootfs.sh makes one for `docker import`.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY wheel/ /tmp/acb-wheel/
COPY include/acb.h /usr/local/include/acb.h
RUN python3 -m venv /opt/acb \
 && /opt/acb/bin/pip install --no-index --no-cache-dir --disable-pip-version-check /tmp/acb-wheel/*.whl \
 && rm -rf /tmp/acb-wheel \
 && lib=$(ls /opt/acb/lib/python3*/site-packages/acb_broker/_libacb.so) \
 && ln -s "$lib" /usr/local/lib/libacb.so \
 && (ldconfig 2>/dev/null || true) \
 && /opt/acb/bin/acb-assigner --version \
 && /opt/acb/bin/python -c 'import acb_broker as acb; print("acb_broker ABI", acb.ABI_VERSION, acb._ffi.LIBRARY_PATH)' \
 && { getent group acb >/dev/null || echo 'acb:x:10001:job' >> /etc/group; } \
 && { getent passwd job >/dev/null || { echo 'job:x:1000:1000::/home/job:/bin/sh' >> /etc/passwd; \
      echo 'job:x:1000:' >> /etc/group; }; } \
 && mkdir -p /home/job && chown 1000:1000 /home/job
ENV PATH=/opt/acb/bin:$PATH \
    ACB_ASSIGNER=unix:/run/acb/assigner.sock \
    ACB_ASSIGNER_UID=10001 \
    ACB_LIBRARY=/usr/local/lib/libacb.so
LABEL org.opencontainers.image.title="acb-client" \
      org.opencontainers.image.description="acb, the open GPU computing broker: libacb, acb_broker and agarun, a base for job images" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric (runAsNonRoot-friendly) and without a group: an explicit gid would drop the
# supplementary group acb that /etc/group gives job.
USER 1000
WORKDIR /home/job
