"""End-to-end checks through the user-facing surfaces, driven as a person would see them."""
