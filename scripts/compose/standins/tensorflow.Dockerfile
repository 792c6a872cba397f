# STAND-IN for tensorflow/tensorflow:<tf pin> (CPU): python3 + the pinned tensorflow wheel, as root.
ARG COMMON_IMAGE
FROM ${COMMON_IMAGE}
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
CMD ["bash"]
