"""Customer state in Redis: every key (one place), the store and all its scripts, overrides, audit."""
