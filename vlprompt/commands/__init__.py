"""Extra CLI subcommands: each module here registers itself in `vlprompt.cli.COMMANDS` on import."""
