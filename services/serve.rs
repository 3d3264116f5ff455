//! Serving gRPC and HTTP/1.1 JSON routes on one listener.
