"""USB identities (vendor ID, product ID, as hex strings) of the real devices of a bench.

Discovery uses them to guess a serial port's role, and ``farm sim`` gives its simulated ports
the same identities so that discovery sees a simulated bench as it would a real one.
"""

from __future__ import annotations

DUT_USB = ("0483", "374B")  # ST-LINK/V2-1 VCP of a NUCLEO board
INTERFACE_USB = ("0483", "374E")  # STLINK-V3 VCP of the STM32H573I-DK
MONITOR_USB = ("0483", "5740")  # LPM01A PowerShield
#: Joulescope JS220: not a serial device; the joulescope package finds it over USB.
JS220_USB = ("16D0", "10BA")
