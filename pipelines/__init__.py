"""lambda-ml pipelines package."""
