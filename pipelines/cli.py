"""The `lambda-ml` command line: one subcommand per job."""

import typer

app = typer.Typer(help="lambda-ml: a Lambda-architecture retraining pipeline.", no_args_is_help=True)
