"""Fixtures shared by the training tests."""

from __future__ import annotations

import socket

import pytest
import torch


@pytest.fixture
def offline(monkeypatch):
    """No hub, no sockets: anything that tries the network fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not stall on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
