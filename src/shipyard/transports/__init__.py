"""Data-plane transports: the only layer that knows JSON, binary tensors or protobuf.

Each turns its wire format into `serving.types` requests and back; the data plane decides.
"""
