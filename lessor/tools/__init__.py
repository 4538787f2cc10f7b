"""Developer tools run as ``python -m lessor.tools.<name>``; nothing in lessor imports them."""
