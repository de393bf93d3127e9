"""Adapters: the only code that talks to NATS JetStream (the event log, parked events),
MongoDB (the read models) or a language model. ``ports`` names what the services need of
them; ``services.testing`` holds in-memory doubles of the same."""
