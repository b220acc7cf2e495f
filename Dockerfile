# distilld in a container: Debian 12 with the same packages `make` installs.
FROM debian:12
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        gcc make libc6-dev libopenblas-dev libjansson-dev zlib1g-dev dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# a portable build: the image may run on other CPUs than the one it was built on
RUN make ARCH=x86-64-v2 build/distilld && install -m 0755 build/distilld /usr/local/bin/distilld
WORKDIR /var/lib/distilld
VOLUME /var/lib/distilld
ENTRYPOINT ["distilld"]
CMD ["run", "/src/recipes/demo.json", "--run-dir", "/var/lib/distilld/runs/demo"]
