"""The edge application: frame sources, the edge encoder and the gRPC streaming client."""
