# The kdive image: the agent, the CNI plugin and the kernel tools they drive.
#   docker build -t IMAGE .      (IMAGE: the image deploy/kdive.yaml names)
# `make image` builds the same contents without Docker, from this machine's
# Debian packages, into bin/kdive-image.tar (for `ctr images import`).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/kdive ./cmd/kdive && \
    CGO_ENABLED=0 go build -trimpath -o /out/kdive-cni ./cmd/kdive-cni

FROM debian:bookworm-slim
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nftables iptables ipset ipvsadm conntrack iproute2 kmod && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kdive /out/kdive-cni /usr/local/bin/
ENTRYPOINT ["kdive"]
