"""`python -m vlprompt ...` is the `vlprompt` command."""

import sys

from vlprompt.cli import main

if __name__ == "__main__":
    sys.exit(main())
