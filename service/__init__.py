"""The HTTP service: `app` assembles it, `server` runs it; docs/architecture.md maps the rest."""
