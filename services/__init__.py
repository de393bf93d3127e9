"""promptgen services: gateway, generator, projector, and the adapters they share."""
