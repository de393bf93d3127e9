"""The gateway: HTTP API and Server-Sent Events. Holds no job state in memory."""
