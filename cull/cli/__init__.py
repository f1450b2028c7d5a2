"""The command line: the only argparse in cull, one module per command (entry point: cull.cli.main)."""
