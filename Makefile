# Developer targets. `make test` is the test command of README.md and of CI.
.PHONY: all build release fmt fmt-check clippy test check reliability fuzz cluster-up cluster-down cluster-e2e-upstream

all: build

build:
	cargo build --workspace

release:
	cargo build --release -p s3vol

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

# Every test, with moto started as the second S3 implementation, then the official CSI
# conformance suite (csi-sanity), the POSIX suite (pjdfstest), the offline manifest
# validation, and the end-to-end scenarios on a real one-node Kubernetes cluster
# (tests/cluster/run.sh; its components are built once into /var/cache/s3vol-tools).
test:
	scripts/with-moto.sh cargo test --workspace
	S3VOL_BIN=$(CURDIR)/target/debug/s3vol scripts/with-moto.sh scripts/csi-sanity.sh
	S3VOL_BIN=$(CURDIR)/target/debug/s3vol scripts/with-moto.sh scripts/pjdfstest.sh
	deploy/validate.sh
	bench/epochs-smoke.sh
	tests/cluster/run.sh

check: fmt-check clippy test

# The fault-storm suite at the sizes of issue 13 (1 GiB, 1000 files, 512 MiB, 10k names,
# 500 objects) and the ten-minute soak (32 writers + 32 readers); about an hour.
# `make test` runs the short variants. Needs root and /dev/fuse.
reliability:
	S3VOL_RELIABILITY=full cargo test -p s3vol --test reliability -- --nocapture
	S3VOL_SOAK_SECS=600 cargo test -p s3vol --test soak -- --nocapture

# Property-based fuzzing of every outside input (volume ids, attributes, secrets,
# parameters, capacities, control messages, mount options, journals, locations) with a
# million cases per target, optimised build. `make test` runs 2000 cases of each.
fuzz:
	S3VOL_FUZZ_CASES=1000000 cargo test --release -p s3vol-csi -p s3vol-fs -p s3vol-store --test fuzz_inputs

# A one-node Kubernetes cluster on this machine (prints the kubeconfig path), and its end.
cluster-up:
	scripts/cluster/up.sh
cluster-down:
	scripts/cluster/down.sh
# The upstream external storage suite (e2e.test) on that cluster; FOCUS narrows it.
cluster-e2e-upstream:
	tests/cluster/run.sh --upstream "$(or $(FOCUS),External.Storage)"
