"""Editor gateway: the service clients call; orchestrates the others."""
