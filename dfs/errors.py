"""Errors that cross process boundaries as an errno plus a message."""

import errno
import os


class DfsError(Exception):
    """An operation failed with a POSIX errno; the message is for humans."""

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        self.message = message or os.strerror(err)
        super().__init__(err, self.message)

    def __str__(self) -> str:
        return f"{self.message} [{errno.errorcode.get(self.errno, self.errno)}]"


class ProtocolError(Exception):
    """The peer broke the wire protocol; the connection cannot go on."""
