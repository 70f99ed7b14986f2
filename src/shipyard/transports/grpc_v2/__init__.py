"""Open Inference Protocol over gRPC. Protobuf types stop at converters.py."""
