"""The DNS wire format, shared by every stage: constants, names, the strict query parser, reply bytes."""
