"""Exceptions with user-facing messages.

Every error the user can cause or fix is an :class:`EasyPhotoError` subclass whose ``str()``
is a complete sentence naming the problem and, where possible, what to do about it. The UI,
the HTTP API (as 4xx) and the CLI show that message as it is.
"""

from __future__ import annotations


class EasyPhotoError(Exception):
    """Base class: the message is meant for the user."""

    #: HTTP status the API answers with for this error.
    http_status = 400


class InvalidRequest(EasyPhotoError, ValueError):
    """A request parameter is missing, out of range or of the wrong type."""

    http_status = 422


class InvalidUserId(InvalidRequest):
    """A user id breaks the naming rules (see ``store.validate_user_id``)."""


class UserNotFound(EasyPhotoError, KeyError):
    """No user id of that name exists in the store."""

    http_status = 404

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0]) if self.args else "user id not found"


class UserExists(EasyPhotoError):
    """The user id is already taken (also case-insensitively)."""

    http_status = 409


class UserBusy(EasyPhotoError):
    """Another operation holds this user id's lock."""

    http_status = 409


class ImageError(EasyPhotoError):
    """An image file cannot be used: unreadable, corrupt, too large, ...

    ``code`` says which: ``"unreadable"`` (missing, empty, not an image, corrupt) or
    ``"too_large"`` (over the pixel or byte limit).
    """

    def __init__(self, message: str, code: str = "unreadable"):
        super().__init__(message)
        self.code = code


class FaceNotFound(EasyPhotoError):
    """No face was detected where one is needed."""


class ModelUnavailable(EasyPhotoError):
    """A model file is missing and cannot be fetched (offline, unknown, ...)."""

    http_status = 503


class ChecksumMismatch(EasyPhotoError):
    """A model file's sha256 differs from the registry's."""

    http_status = 500
