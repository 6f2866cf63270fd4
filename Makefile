# pgreap — see README.md.
GO      ?= go
# The toolchain go.mod names (fetched through the module proxy when the
# installed go is older): its standard library has the fixes vulncheck asks
# for. GOTOOLCHAIN=local in the environment keeps the installed one.
export GOTOOLCHAIN ?= auto
MAJORS  ?= 12 13 14 15 16 17 18
# Every package (most of them depend on the server version).
MATRIX_PKGS ?= ./...

.PHONY: build test vet vulncheck matrix demo bench fuzz soak man docs ldflags release clean

# What pgreap version says (see internal/cli/version.go).
VERSION ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || echo v0.0.0-dev+$$(git rev-parse --short HEAD 2>/dev/null || echo unknown))
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's date, not the clock's: the same commit builds the same binary.
DATE    ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
EPOCH   ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
PKG     := github.com/pgreap/pgreap/internal/cli
LDFLAGS := -s -w -X $(PKG).buildVersion=$(VERSION) -X $(PKG).buildCommit=$(COMMIT) -X $(PKG).buildDate=$(DATE)
# Release targets: static binaries (no cgo), every one from one make release.
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
NFPM    ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o pgreap ./cmd/pgreap

# Hostile input: every fuzz target for FUZZTIME (docs/reliability.md). A
# short minimization keeps the engine fuzzing instead of shrinking inputs.
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./internal/selector -run '^$$' -fuzz '^FuzzParseCompile$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./internal/action -run '^$$' -fuzz '^FuzzReadPlan$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./internal/policy -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./internal/output -run '^$$' -fuzz '^FuzzCleanFastPath$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./internal/output -run '^$$' -fuzz '^FuzzAppendJSONString$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./internal/conn -run '^$$' -fuzz '^FuzzRedact$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s

# The long soaks (docs/reliability.md): 10,000 actions among connecting and
# disconnecting clients, checked against the server log; 5,000 among
# clients that record what each of their statements got, checked against
# what they saw.
soak:
	PGREAP_SOAK_ACTIONS=10000 PGREAP_ORACLE_ACTIONS=5000 $(GO) test -count=1 -timeout 30m ./internal/action -run '^(TestChurnSoak|TestClientOracle)$$' -v

# pgreap at work on a throwaway PostgreSQL: the tour, unattended
# (`pgreap demo` without --script waits for you in a second terminal).
# Without server binaries on the machine, PostgreSQL DEMO_PG is fetched
# first, as the tests get theirs (scripts/pg-fetch, into the cache the
# demo looks in too): nothing to install but Go.
DEMO_PG ?= 18
demo:
	@bin=$$($(GO) run ./internal/cli/demobin) || exit 1; \
	if [ -z "$$bin" ]; then \
		echo "make demo: no PostgreSQL server binaries on this machine: fetching PostgreSQL $(DEMO_PG) (scripts/pg-fetch $(DEMO_PG))"; \
		scripts/pg-fetch $(DEMO_PG); \
	fi
	$(GO) run ./cmd/pgreap demo --script

# Man pages of every command, from their --help.
man:
	rm -rf man && SOURCE_DATE_EPOCH=$(EPOCH) $(GO) run -ldflags "$(LDFLAGS)" ./internal/cli/docgen -man man

# The build flags, for a test that builds with them.
ldflags:
	@echo '$(LDFLAGS)'

# docs/commands: the reference of every command, from their --help (a test
# fails when it is out of date).
docs:
	rm -rf docs/commands && $(GO) run ./internal/cli/docgen -md docs/commands

# dist/: pgreap_VERSION_OS_ARCH.tar.gz for each platform, .deb and .rpm for
# linux, SHA256SUMS of them all.
release: man
	rm -rf dist && mkdir -p dist/man
	for f in man/*.1; do gzip -9n < $$f > dist/man/$$(basename $$f).gz; done
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; d=dist/$${os}_$${arch}; \
		echo "== $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $$d/pgreap ./cmd/pgreap; \
		cp README.md LICENSE $$d/; mkdir -p $$d/man; cp man/*.1 $$d/man/; \
		tar -C dist --sort=name --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' --mtime='$(DATE)' \
			-cf - $${os}_$${arch} | gzip -9n > dist/pgreap_$(VERSION)_$${os}_$${arch}.tar.gz; \
		if [ $$os = linux ]; then \
			sed -e "s|\$${ARCH}|$$arch|g" -e "s|\$${VERSION}|$(VERSION)|g" -e "s|\$${DATE}|$(DATE)|g" packaging/nfpm.yaml > dist/nfpm-$$arch.yaml; \
			for fmt in deb rpm; do SOURCE_DATE_EPOCH=$(EPOCH) $(NFPM) package --config dist/nfpm-$$arch.yaml --packager $$fmt --target dist/; done; \
		fi; \
	done
	cd dist && sha256sum *.tar.gz *.deb *.rpm > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf pgreap dist man

# Every test, against a real PostgreSQL (the newest installed, or
# PGREAP_TEST_PG=MAJOR from the cache scripts/pg-fetch fills).
test: vet vulncheck
	$(GO) test -race -count=1 ./...

STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Known vulnerabilities in the code pgreap calls (scripts/vulncheck: an
# offline copy of the Go vulnerability database, pinned).
vulncheck:
	GO=$(GO) scripts/vulncheck

vet:
	$(GO) vet ./...
	$(STATICCHECK) ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@# make release's platforms: a Linux-only call outside a _linux.go file
	@# breaks them, and no test runs there.
	@for p in $(PLATFORMS); do GOOS=$${p%/*} GOARCH=$${p#*/} CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/pgreap || { echo "pgreap does not build for $$p"; exit 1; }; done

# The whole suite, with the race detector, on every supported major version.
matrix:
	scripts/pg-fetch $(MAJORS)
	@set -e; for v in $(MAJORS); do \
		echo "== PostgreSQL $$v"; \
		PGREAP_TEST_PG=$$v $(GO) test -race -count=1 $(MATRIX_PKGS); \
	done

# ls is quick (20 runs); one terminate iteration takes about 100 s (the
# pg_terminate_backend(pid, 5000) baseline costs 100 ms per session).
bench:
	$(GO) test ./bench -run '^$$' -bench Ls -benchtime 20x
	$(GO) test ./bench -run '^$$' -bench Terminate -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench Kick -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench 'Drain$$' -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench DrainPgBouncer -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench Apply -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench 'Exec$$' -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench WatchOvershoot -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench WatchBlockingOvershoot -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench 'Top$$' -benchtime 20x
	$(GO) test ./bench -run '^$$' -bench WatchCost -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench WatchBlockingCost -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench TopCost -benchtime 1x
