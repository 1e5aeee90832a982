"""Fixtures shared by the training tests."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def offline(monkeypatch):
    """No hub, no sockets: anything that tries the network fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)

