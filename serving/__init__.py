"""lambda-ml serving package."""
