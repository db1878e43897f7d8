"""Datagram transports: they only move bytes.

A TX transport takes one datagram (the output of the link sender) and puts it
on the wire; pacing to the link's bit rate is done by the caller with
`agent.link.pacer.TokenBucket`, using the transport's `overhead_bytes` so the
budget counts what really crosses the wire. An RX transport hands every
datagram it receives to a callback, in the asyncio loop's thread.
"""
