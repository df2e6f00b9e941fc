"""The `facerec` command line: a client of the facerec HTTP API (see facerec_cli.main)."""
