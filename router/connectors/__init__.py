"""Helpdesk connectors: a ticket comes in (webhook or followed), the decision goes back through the helpdesk's API."""
