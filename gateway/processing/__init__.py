"""Pure pre/post-processing: bytes and arrays in, arrays out; no I/O, no network."""
