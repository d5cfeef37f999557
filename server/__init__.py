"""The cloud application: gRPC servicer, decode/predict/detect pipeline, batching and metrics."""
