# Developer targets. `make test` is the test command of README.md and of CI.
.PHONY: all build release fmt fmt-check clippy test check

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
# conformance suite (csi-sanity), the POSIX suite (pjdfstest) and the offline manifest
# validation.
test:
	scripts/with-moto.sh cargo test --workspace
	S3VOL_BIN=$(CURDIR)/target/debug/s3vol scripts/with-moto.sh scripts/csi-sanity.sh
	S3VOL_BIN=$(CURDIR)/target/debug/s3vol scripts/with-moto.sh scripts/pjdfstest.sh
	deploy/validate.sh

check: fmt-check clippy test
