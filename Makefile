# distilld - build, run, test.
#
#   make run     install what is missing, build, start the daemon (first start: the demo job)
#   make test    install what is missing, build, run every test
#   make bench   speed against PyTorch on the same CPU
#   make SANITIZER=address test   (or undefined, thread) sanitized build and tests

CC      ?= gcc
SANITIZER ?=
BUILD   := build$(if $(SANITIZER),-$(SANITIZER))
# Built on the machine it runs on, for that CPU; ARCH=x86-64-v2 (say) for a portable build.
ARCH    ?= native
CFLAGS  := -std=c11 -O3 -march=$(ARCH) -g -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -Icore -Iserver -pthread -fopenmp \
           $(if $(SANITIZER),-fsanitize=$(SANITIZER) -fno-omit-frame-pointer)
LDLIBS  := -lopenblas -lturbojpeg -ljansson -lsqlite3 -lmicrohttpd -lz -lm -pthread -fopenmp $(if $(SANITIZER),-fsanitize=$(SANITIZER))

# Debian packages: to build, to test (PyTorch is the numeric reference), to benchmark.
BUILD_PACKAGES := gcc make libopenblas-dev libturbojpeg0-dev libjansson-dev libsqlite3-dev libmicrohttpd-dev zlib1g-dev \
                  libcurl4-openssl-dev dataset-fashion-mnist
TEST_PACKAGES  := python3 python3-numpy python3-pil python3-scipy python3-torch chromium python3-onnx python3-opencv
BENCH_PACKAGES := libjemalloc2
RESULTS_PACKAGES := python3-matplotlib

CORE_SRC := $(wildcard core/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
# the daemon's pieces, linked into distilld and the server tests
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o)
# the distill CLI (libcurl + jansson)
CLIENT_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard client/*.c))
C_TESTS  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

.PHONY: all deps test-deps web-deps run test bench results clean
all: $(BUILD)/distilld $(BUILD)/distill $(C_TESTS) $(BUILD)/tests/model_check $(BUILD)/tests/images_dump

deps:
	@tools/install-packages $(BUILD_PACKAGES)
test-deps:
	@tools/install-packages $(BUILD_PACKAGES) $(TEST_PACKAGES)

# The dashboard's npm packages (uPlot; playwright-core for the browser test) from
# web/package-lock.json, again whenever the lock file is newer than the stamp.
web-deps: web/node_modules/.installed
web/node_modules/.installed: web/package-lock.json
	@command -v npm >/dev/null || tools/install-packages nodejs npm
	cd web && npm ci --no-audit --no-fund
	@touch $@

$(BUILD)/%.o: %.c $(wildcard core/*.h server/*.h) | $(BUILD)/core $(BUILD)/server $(BUILD)/tests
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/core $(BUILD)/server $(BUILD)/tests:
	mkdir -p $@

$(BUILD)/libdistilld.a: $(CORE_OBJ)
	ar rcs $@ $^

$(BUILD)/libdistilld-server.a: $(SERVER_OBJ)
	ar rcs $@ $^

$(BUILD)/distilld: $(BUILD)/server/main.o $(BUILD)/libdistilld-server.a $(BUILD)/libdistilld.a
	$(CC) $^ $(LDLIBS) -o $@

$(CLIENT_OBJ): $(wildcard client/*.h) | $(BUILD)/client

$(BUILD)/client:
	mkdir -p $@

$(BUILD)/distill: $(CLIENT_OBJ)
	$(CC) $^ -lcurl -ljansson $(if $(SANITIZER),-fsanitize=$(SANITIZER)) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libdistilld-server.a $(BUILD)/libdistilld.a
	$(CC) $^ $(LDLIBS) -o $@

# The daemon in the foreground with its defaults (127.0.0.1:8080, data in ./var);
# on first start it submits the built-in demo job.
run: deps web-deps
	@$(MAKE) --no-print-directory $(BUILD)/distilld
	./$(BUILD)/distilld serve --data-dir var --first-job recipes/demo.json

test: test-deps web-deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) tests/run-all

bench: test-deps
	@tools/install-packages $(BENCH_PACKAGES)
	@$(MAKE) --no-print-directory all $(BUILD)/tests/bench
	@BUILD=$(BUILD) tests/bench.sh

# The paper's claim at small scale (docs/RESULTS.md): hours of CPU, not a test.
results: deps
	@tools/install-packages $(RESULTS_PACKAGES)
	@$(MAKE) --no-print-directory $(BUILD)/distilld
	@BUILD=$(BUILD) tools/results.sh

clean:
	rm -rf build build-*
