"""The projector: the only writer of MongoDB, and the job's process manager."""
