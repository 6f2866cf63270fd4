# pgreap — see README.md.
GO      ?= go
MAJORS  ?= 12 13 14 15 16 17 18
# Every package (most of them depend on the server version).
MATRIX_PKGS ?= ./...

.PHONY: build test vet matrix quickstart bench clean

build:
	$(GO) build -o pgreap ./cmd/pgreap

# Every test, against a real PostgreSQL (the newest installed, or
# PGREAP_TEST_PG=MAJOR from the cache scripts/pg-fetch fills).
test: vet
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The version-dependent tests on every supported major version.
matrix:
	scripts/pg-fetch $(MAJORS)
	@set -e; for v in $(MAJORS); do \
		echo "== PostgreSQL $$v"; \
		PGREAP_TEST_PG=$$v $(GO) test -count=1 $(MATRIX_PKGS); \
	done

# pgreap at work on a throwaway server.
quickstart:
	$(GO) run ./internal/pgtest/quickstart

# ls is quick (20 runs); one terminate iteration takes about 100 s (the
# pg_terminate_backend(pid, 5000) baseline costs 100 ms per session).
bench:
	$(GO) test ./bench -run '^$$' -bench Ls -benchtime 20x
	$(GO) test ./bench -run '^$$' -bench Terminate -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench Kick -benchtime 1x
	$(GO) test ./bench -run '^$$' -bench Drain -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench WatchOvershoot -benchtime 3x
	$(GO) test ./bench -run '^$$' -bench 'Top$$' -benchtime 20x
	$(GO) test ./bench -run '^$$' -bench WatchCost -benchtime 1x

clean:
	rm -f pgreap
