"""Local launchers of the services the pipeline runs on: Kafka, S3Proxy, MLflow, BentoML."""
