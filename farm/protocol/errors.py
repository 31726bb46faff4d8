"""Protocol errors, split the way h11 splits them.

A :class:`LocalProtocolError` means *we* (the host) tried to do something the protocol does
not allow: the fault is in our code or in the caller's input, and nothing was sent.
A :class:`RemoteProtocolError` means the device sent something the protocol does not allow:
the fault is on the wire or in the device, and the link needs a resync.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol violation."""


class LocalProtocolError(ProtocolError):
    """The host asked for something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The device sent bytes that violate the protocol."""
