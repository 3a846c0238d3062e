"""The optional worker processes that encode (export) and decode (verify) record frames
beside the main process."""
