# mpsync: `make demo` runs the demo on the memory backend; `make test` runs
# every test (it builds and starts the control plane it needs); `make bench`
# runs the benchmarks.
GO     ?= go
BIN    ?= $(CURDIR)/bin
# The modules: each directory with a go.mod. Each is built, vetted and
# tested in its own directory with GOWORK=off, as a user's build would be
# (go.work serves development only; hack/controlplane builds its own).
MODULES = $(filter-out hack/%,$(dir $(shell git ls-files '*go.mod')))
export GOWORK = off
# The elector's build. Dockerfile.elector runs `make elector` so the image
# and the binary the tests use cannot drift apart.
ELECTOR_BUILD = cd sidecar && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/elector ./cmd/elector
STATICCHECK = $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all elector examples demo test e2e lint bench clean

all: elector examples

elector:
	$(ELECTOR_BUILD)

examples:
	$(GO) build -o $(BIN)/ ./examples/lock ./examples/election ./examples/observer
	cd examples/inprocess && $(GO) build -o $(BIN)/ .

demo: elector examples
	hack/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do echo "vet, staticcheck: $$m"; (cd $$m && $(GO) vet ./... && $(STATICCHECK) ./...); done

test: lint elector examples
	hack/test.sh

# The end-to-end suite alone: the shipped manifests on a real node
# (hack/e2e.sh; needs root). `make test` runs it too.
e2e: elector examples
	hack/e2e.sh

bench: elector examples
	hack/bench.sh

clean:
	rm -rf $(BIN)
