# quorumkv — build, run a local cluster, test.
#
#   make run-replicas     build (release) and start every replica of replicas.txt in the background
#                         (REPLICAS=cluster-murmur3.txt: a murmur3 cluster with string keys)
#   make stop-replicas    stop them
#   make test             the whole test suite, plus the image tests with --features images
#   make tsan             the whole test suite under ThreadSanitizer (nightly + rust-src)
#   make lint             rustfmt check and clippy with warnings as errors
#   make soak             the nemesis test, then its bank run, for DURATION seconds each (default 600), release build;
#                         SEED=… replays one
#   make bench            release build, a cluster on free loopback ports, the standard matrix, one table
#                         (with the murmur3 rows: 100,000 string keys, against the byte-ordered rows),
#                         then bench-resp (the comparison with redis-server; skipped with a note without redis)
#   make bench-memory     resident memory and restart time of a replica holding BENCH_KEYS (1M) keys, against redis-server
#   make bench-snapshot   put QUORUM p99 on a 3-replica cluster holding BENCH_KEYS keys, without and while snapshots run
#   make bench-storage    both, one table (about 5 minutes at 1M keys)
#   make bench-join       a node joins a 3-replica cluster holding BENCH_KEYS keys: its streaming rate against
#                         a plain TCP copy of the same bytes, and put QUORUM p99 while one streams (about 2 minutes)
#   make bench-txn        transactions and mget against QUORUM puts and gets, and at 32 clients (about 2 minutes)
#   make bench-resp       redis-benchmark against redis-server (AOF everysec) and a 4-replica cluster's RESP port
#                         (skipped with a note without redis-server and redis-benchmark; about 3 minutes)
#
#   RESP=1 make run-replicas   every replica also speaks the Redis protocol on its port + 1000

CARGO      ?= cargo
REPLICAS   ?= replicas.txt
RUN_DIR    ?= run
MODE       ?=
REPLICA_FLAGS ?=
RESP       ?=
TSAN_TARGET ?= x86_64-unknown-linux-gnu

DURATION   ?= 600
SEED       ?=

BENCH_DURATION ?= 2s
BENCH_FLAGS ?=
BENCH_KEYS ?= 1000000
BENCH_BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/bench

.PHONY: all build run-replicas stop-replicas test test-images tsan lint fmt clean bench soak

all: build

build:
	$(CARGO) build --release

run-replicas: build
	@mkdir -p $(RUN_DIR)
	@awk '{ sub(/#.*/, "") } NF >= 3 && $$3 ~ /^[0-9]+$$/ { print $$1, $$2, $$3 }' $(REPLICAS) | while read -r name host port; do \
	  pidfile=$(RUN_DIR)/$$name.pid; \
	  if [ -f $$pidfile ] && kill -0 "$$(cat $$pidfile)" 2>/dev/null; then \
	    echo "$$name already running (pid $$(cat $$pidfile))"; continue; \
	  fi; \
	  resp=""; if [ -n "$(RESP)" ]; then resp="--resp-port $$((port + 1000))"; fi; \
	  ./target/release/replica $$name $$port $(REPLICAS) $(MODE) --data-dir $(RUN_DIR)/data/$$name $$resp $(REPLICA_FLAGS) >> $(RUN_DIR)/$$name.log 2>&1 & \
	  echo $$! > $$pidfile; \
	  echo "started $$name on $$host:$$port$${resp:+ (RESP on $$((port + 1000)))} (pid $$!, log $(RUN_DIR)/$$name.log)"; \
	done
	@sleep 0.5
	@for f in $(RUN_DIR)/*.pid; do kill -0 "$$(cat $$f)" 2>/dev/null || { echo "$$f: replica exited; see its log:"; tail -3 $${f%.pid}.log; exit 1; }; done
	@first=$$(awk '{ sub(/#.*/, "") } NF >= 3 && $$3 ~ /^[0-9]+$$/ { print $$1, $$2, $$3; exit }' $(REPLICAS)); \
	 set -- $$first; \
	 echo "Connect with: ./target/release/client $$2 $$3    (stop with: make stop-replicas)"

stop-replicas:
	@for f in $(RUN_DIR)/*.pid; do \
	  [ -f "$$f" ] || continue; \
	  pid=$$(cat $$f); \
	  if kill "$$pid" 2>/dev/null; then echo "stopped $$(basename $$f .pid) (pid $$pid)"; fi; \
	  rm -f $$f; \
	done

# The image tests need the optional decoders (`--features images`); if they
# cannot be built (crates not fetchable offline), this says so loudly and
# skips only that part.
test:
	$(CARGO) test --all-targets
	@$(MAKE) --no-print-directory test-images

test-images:
	@if $(CARGO) build --features images --lib >/dev/null 2>&1; then \
	  $(CARGO) test --features images --lib image && $(CARGO) test --features images --test images --test iset; \
	else \
	  echo "!!!!!!!! make test: cannot build with --features images (crates not fetchable?); image decoding tests NOT RUN !!!!!!!!"; \
	fi

# The nemesis test (faults, concurrent clients, history checks) for DURATION seconds.
soak:
	QUORUMKV_NEMESIS_SECS=$(DURATION) $(if $(SEED),QUORUMKV_NEMESIS_SEED=$(SEED)) \
	  $(CARGO) test --release --test nemesis nemesis -- --exact --nocapture
	QUORUMKV_NEMESIS_SECS=$(DURATION) $(if $(SEED),QUORUMKV_NEMESIS_SEED=$(SEED)) \
	  $(CARGO) test --release --test nemesis nemesis_bank -- --exact --nocapture

# ThreadSanitizer needs std rebuilt with the sanitizer (-Zbuild-std), hence
# nightly and rust-src. If they cannot be installed this says so loudly.
tsan:
	@if ! rustup run nightly rustc --version >/dev/null 2>&1; then \
	  rustup toolchain install nightly --profile minimal --component rust-src || { \
	    echo "!!!!!!!! make tsan: cannot install the nightly toolchain; ThreadSanitizer NOT RUN !!!!!!!!"; exit 0; }; \
	fi; \
	if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then \
	  rustup component add rust-src --toolchain nightly || { \
	    echo "!!!!!!!! make tsan: cannot install rust-src for nightly; ThreadSanitizer NOT RUN !!!!!!!!"; exit 0; }; \
	fi; \
	RUSTFLAGS='-Zsanitizer=thread' RUSTDOCFLAGS='-Zsanitizer=thread' CARGO_TARGET_DIR=target/tsan \
	  TSAN_OPTIONS='halt_on_error=0 second_deadlock_stack=1' QUORUMKV_TSAN=1 \
	  $(CARGO) +nightly test -Zbuild-std --target $(TSAN_TARGET) --lib --tests

# Replicas (and redis-server) are pinned to CPU 0 and the load generator to CPU 1 when taskset
# exists: loopback round trips are bimodal on this machine, pinning makes runs comparable.
bench_pinned = if command -v taskset >/dev/null 2>&1 && [ "$$(nproc)" -ge 2 ]; then \
	  taskset -c 1 $(BENCH_BIN) $(1) --pin-replicas 0 $(BENCH_FLAGS); \
	else \
	  echo "(taskset not available or one CPU: running unpinned)"; \
	  $(BENCH_BIN) $(1) $(BENCH_FLAGS); \
	fi

.PHONY: bench-memory bench-snapshot bench-storage bench-join bench-txn bench-resp

# Not pinned: redis-server uses one CPU however it is run, quorumkv's replicas
# (threads) and redis-benchmark share the machine alike for both.
bench-resp: build
	@$(BENCH_BIN) resp $(BENCH_FLAGS)

bench: build
	@$(call bench_pinned,matrix --duration $(BENCH_DURATION) --warmup 500ms)
	@$(BENCH_BIN) resp $(BENCH_FLAGS)

bench-memory: build
	@$(call bench_pinned,memory --keys $(BENCH_KEYS))

bench-snapshot: build
	@$(call bench_pinned,snapshot --keys $(BENCH_KEYS))

bench-storage: build
	@$(call bench_pinned,storage --keys $(BENCH_KEYS))

# Not pinned: the joiner and the replicas it copies from run side by side, as
# the two ends of the plain TCP copy it is compared with do.
bench-join: build
	$(BENCH_BIN) join --keys $(BENCH_KEYS) $(BENCH_FLAGS)

bench-txn: build
	@$(call bench_pinned,txn)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	@if $(CARGO) fetch >/dev/null 2>&1; then \
	  $(CARGO) clippy --all-targets --features images -- -D warnings; \
	else \
	  echo "!!!!!!!! make lint: cannot fetch the crates of --features images; clippy with images NOT RUN !!!!!!!!"; \
	fi

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)
