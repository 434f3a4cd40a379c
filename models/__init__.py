"""lambda-ml models package."""
