# STAND-IN for tensorflow/serving:<tf pin>. No tensorflow_model_server binary can be had here, so
# `tensorflow_model_server` runs the repo's dev server (python -m serving, REST only) behind the real image's
# entrypoint contract: /usr/bin/tf_serving_entrypoint.sh, ENV MODEL_NAME / MODEL_BASE_PATH, ports 8500/8501.
# Built on the tensorflow image (stand-in or real), so the TensorFlow wheel is installed once, not twice.
ARG TF_IMAGE
FROM ${TF_IMAGE}
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY serving /opt/bertbc-standin/serving
COPY tensorflow_model_server tf_serving_entrypoint.sh /usr/bin/
RUN chmod 0755 /usr/bin/tensorflow_model_server /usr/bin/tf_serving_entrypoint.sh \
    && chmod -R a+rX /opt/bertbc-standin
ENV MODEL_NAME=model MODEL_BASE_PATH=/models
RUN mkdir -p ${MODEL_BASE_PATH}
EXPOSE 8500 8501
ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]
