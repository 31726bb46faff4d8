"""Errors the board clients raise, each naming the port and what to check."""

from __future__ import annotations

from farm.protocol.errors import RemoteProtocolError


class DeviceTimeout(TimeoutError):
    """No complete reply within the wire-time model's deadline.

    The hint says what to check: a device that never answered on this link is probably at
    another baud or not there at all; one that answered before has stopped (a hang, or a
    command slower than modelled)."""

    def __init__(
        self,
        port: str,
        command: str,
        timeout: float,
        received: int,
        garbled: bool,
        baud: int,
        *,
        answered_before: bool = False,
    ) -> None:
        if received == 0 and answered_before:
            hint = "the device stopped answering (hung, or busy past the modelled time)"
        elif received == 0:
            hint = (
                f"no valid reply: is the board connected and running at {baud} baud? Check the baud"
            )
        elif garbled:
            hint = f"only garbled bytes came back: the board may run at another baud than {baud}"
        else:
            hint = "the reply stopped before m-ready (hang, reset or lost bytes)"
        super().__init__(f"{port}: no reply to {command!r} within {timeout:.3f} s: {hint}")
        self.port = port
        self.command = command
        self.timeout = timeout
        self.received = received


class DeviceCommandError(Exception):
    """The device rejected a command and said why (an ``e-[...]`` line or an LF-only error,
    an LPM01A ``error`` line). Carries the device's own text."""

    def __init__(self, port: str, command: str, device_text: str) -> None:
        super().__init__(f"{port}: {command!r} rejected by the device: {device_text}")
        self.port = port
        self.command = command
        self.device_text = device_text


class DeviceReset(RemoteProtocolError):
    """The device printed its boot banner in the middle of a reply: it rebooted."""


class GarbledReply(RemoteProtocolError):
    """A reply held bytes no firmware prints (noise, dropped or corrupted bytes)."""


class ResyncFailed(RemoteProtocolError):
    """The resync procedure did not bring the device back to a known state."""
