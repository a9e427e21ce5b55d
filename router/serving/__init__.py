"""Request-side services: decisions, screen-pop, handoff, webhooks, customer view, portfolio, reloads."""
