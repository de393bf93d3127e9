"""Running a process: settings, logs, its lifecycle (stop, readiness, resuming), how
failures are sorted, and what every composition root does alike (``wiring``)."""
