"""The stream process: Kafka events folded into Redis (I/O loop, pure batch planning, cache, health)."""
