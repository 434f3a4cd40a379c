"""The `lambda-ml` command line: one subcommand per job."""
