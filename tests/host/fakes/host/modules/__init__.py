"""Fake WebUI ``modules`` package (see tests/host/fakes/README.md)."""
