"""Subcommands of the `updlrm` command, one module each."""
