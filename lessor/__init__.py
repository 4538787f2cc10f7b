"""lessor: an event-sourced lease and scheduling core on Redis Streams."""

__version__ = "0.1.0"
