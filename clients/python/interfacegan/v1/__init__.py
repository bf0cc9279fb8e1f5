"""Generated protobuf and gRPC code of API v1; produced by `make protos`, never edited by hand."""
