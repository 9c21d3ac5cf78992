"""The HTTP API (FastAPI): `app.create_app` builds it; `schemas` holds its bodies."""
