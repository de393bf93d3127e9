"""The projector: the fold (the only writer of MongoDB's read models) and the job's process manager."""
