"""End-to-end tests against a real Label Studio server (see tests/e2e/labelstudio.py)."""
