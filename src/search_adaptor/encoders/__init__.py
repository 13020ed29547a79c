"""Encoders: one module per provider behind :class:`~search_adaptor.encoders.base.Encoder`."""

from search_adaptor.encoders.base import Encoder, EncoderError, Kind

__all__ = ["Encoder", "EncoderError", "Kind"]
