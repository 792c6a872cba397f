# STAND-IN for python:3.11-slim-bookworm: the common base already is bookworm + python 3.11 + pip.
ARG COMMON_IMAGE
FROM ${COMMON_IMAGE}
CMD ["python3"]
