"""Unidirectional gateway agents: TX (OT side) and RX (IT side) for a data diode."""

__version__ = "0.1.0"
