"""The `promptgen` command (``main``): the launcher of the whole system (``up``, with its
supervisor and the embedded NATS and MongoDB), one service alone, and the operator's
commands (replay, rebuild, parked, doctor, probe, asyncapi)."""
