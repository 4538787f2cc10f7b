"""The scheduler a control plane embeds: submit, abort, query, watch; the worker runtime."""
