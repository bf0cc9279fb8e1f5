"""Examples that drive the cluster through the Python SDK, as a user would."""
