"""The web console at /ui: server-rendered pages (Jinja2) with htmx for live parts.

No build step and no Node: templates, one stylesheet and the vendored htmx ship inside
the package. Pages read the same services as the REST API; every route has its rule in
security/policy.py, and the HTTP gate admits a signed-in session cookie like a key
(security/sessions.py), with a CSRF token on anything that changes state.
"""
