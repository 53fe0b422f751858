"""Local emulators of the providers' HTTP APIs, written from their public documentation.

Each is an ASGI app: tests use it in-process through `httpx.ASGITransport`, or on a real port through
`ServedApp` for end-to-end runs with a `relay serve` process or an in-process Relay.
"""
