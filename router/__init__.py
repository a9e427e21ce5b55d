"""router: value-aware support routing."""
