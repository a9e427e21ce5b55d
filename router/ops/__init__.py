"""Operations plumbing: metrics, logs, heap settings, Kafka administration."""
