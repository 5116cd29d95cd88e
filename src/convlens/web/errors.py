"""Errors with an HTTP status, answered as JSON ``{"error": message}``."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses, with the status to answer and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
