"""The operations console at ``/console``: server-rendered pages for people, served by the API.

Portfolio figures, a customer's data and decisions explained (GDPR transparency), a policy
what-if over the live customer base, and a search over the audit trail. Sign-in with an API
key gives a session cookie; the key's scopes decide what a person sees and may do.
Controllers (``controllers.py``) are thin; pages are Jinja templates (``templates/``), charts
are SVG drawn by ``charts.py``, styles and the few lines of script are in ``static/``.
"""
