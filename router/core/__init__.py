"""Pure domain code: the one reducer, features, scores, identifiers, portfolio arithmetic. No I/O."""
