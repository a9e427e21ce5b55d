"""Wire contracts (msgspec Structs) and their generated JSON Schemas."""
