"""The data plane: protocol codecs, validation, worker processes, model lifecycle."""
