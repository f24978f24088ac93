# adapterd on Debian 12 (CPU). The same scripts a developer runs install the
# dependencies and build; the image serves the embedded demo model unless a
# model directory is mounted and passed with --model.
#   docker build -t adapterd .
#   docker run -p 50051:50051 -v $PWD/models:/models adapterd --model /models/my-model
FROM debian:12
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV ADAPTERD_VENV=/opt/adapterd/venv ADAPTERD_BUILD_DIR=/src/build \
    ADAPTERD_CMAKE_ARGS="-DADAPTERD_BUILD_TESTS=OFF -DADAPTERD_BUILD_BENCH=OFF"
RUN scripts/setup.sh && scripts/build.sh adapterd adapterctl \
    && install -m 0755 build/server/adapterd build/client/adapterctl /usr/local/bin/
VOLUME /data
EXPOSE 50051
ENTRYPOINT ["adapterd", "--listen", "0.0.0.0:50051", "--data-dir", "/data"]
