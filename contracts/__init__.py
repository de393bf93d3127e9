"""The shared language of promptgen: every message that crosses a process boundary.

Pure pydantic v2 models with no I/O. A service that only wants to follow prompt
events depends on this package alone:

* :mod:`contracts.domain`: templates, personas, modes, results.
* :mod:`contracts.events`: the event envelope and every event type in the log.
* :mod:`contracts.subjects`: the NATS subjects events live on.
* :mod:`contracts.api`: HTTP request and response bodies.
* :mod:`contracts.sse`: the three Server-Sent Event messages.
* :mod:`contracts.limits`: the caps on every value from outside (free-form values, ids, text).
"""
