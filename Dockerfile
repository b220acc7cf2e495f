# distilld in a container: Debian 12 with the same packages `make` installs.
FROM debian:12
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        gcc make libc6-dev libopenblas-dev libturbojpeg0-dev libjansson-dev libsqlite3-dev libmicrohttpd-dev zlib1g-dev \
        dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# a portable build: the image may run on other CPUs than the one it was built on
RUN make ARCH=x86-64-v2 build/distilld \
    && install -m 0755 build/distilld /usr/local/bin/distilld \
    && mkdir -p /usr/share/distilld \
    && cp -r migrations recipes /usr/share/distilld/ \
    && if [ -d web ]; then cp -r web /usr/share/distilld/; fi
VOLUME /var/lib/distilld
EXPOSE 8080
# Off loopback every endpoint needs the token: docker compose exec distilld cat /var/lib/distilld/token
ENTRYPOINT ["distilld"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/distilld", \
     "--migrations", "/usr/share/distilld/migrations", "--web", "/usr/share/distilld/web", \
     "--first-job", "/usr/share/distilld/recipes/demo.json"]
