"""lambda-ml streams package."""
