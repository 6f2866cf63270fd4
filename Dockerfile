# pgreap in a distroless image: the static binary and nothing else (no
# shell, no package manager), running as the image's nonroot user.
#
#   docker build -t pgreap .
#   docker run --rm -e PGHOST=db1 -e PGUSER=reaper pgreap ls
#   docker run --rm -v /etc/pgreap:/etc/pgreap:ro pgreap watch -c /etc/pgreap/policy.yaml
#
# deploy/kubernetes runs it as the watch daemon.
FROM golang:1.26 AS build
# go.mod asks for go 1.26.8: an older 1.26 image fetches it.
ENV GOTOOLCHAIN=auto
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# docker build --build-arg VERSION=$(git describe --tags) --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(git log -1 --format=%cI) .
ARG VERSION=devel
ARG COMMIT=
ARG DATE=
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/pgreap/pgreap/internal/cli.buildVersion=${VERSION} -X github.com/pgreap/pgreap/internal/cli.buildCommit=${COMMIT} -X github.com/pgreap/pgreap/internal/cli.buildDate=${DATE}" \
      -o /pgreap ./cmd/pgreap

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pgreap /usr/bin/pgreap
USER nonroot:nonroot
# watch's metrics and /healthz (metrics_addr must then listen on 0.0.0.0).
EXPOSE 9188
ENTRYPOINT ["/usr/bin/pgreap"]
CMD ["--help"]
