# STAND-IN base for the bertbc compose test, NOT an upstream image: Debian bookworm minbase (debootstrap)
# + python3 3.11 + pip, plus this host's CA bundle and pip `cert =` so pip works behind the host's TLS setup.
# Built by scripts/compose/standins.sh; every stand-in image starts FROM this one.
ARG ROOTFS_IMAGE
FROM ${ROOTFS_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
# Upstream Python images have `python`/`pip` and no PEP 668 marker; TensorFlow's images pip-install as root.
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -sf /usr/bin/python3 /usr/local/bin/python \
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip \
    && printf 'STAND-IN image built by bertbc scripts/compose/standins.sh (debootstrap bookworm); not the upstream image.\n' \
       > /BERTBC_STANDIN
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 LANG=C.UTF-8
LABEL org.bertbc.standin="true"
CMD ["bash"]
