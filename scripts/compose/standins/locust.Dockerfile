# STAND-IN for locustio/locust:<locust pin>: the pinned locust wheel, user `locust` (uid 1000) like upstream.
ARG COMMON_IMAGE
FROM ${COMMON_IMAGE}
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt \
    && useradd --uid 1000 --create-home locust
USER locust
WORKDIR /home/locust
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
