"""`python -m vlprompt ...` is the `vlprompt` command."""

import sys

from vlprompt.cli import main

sys.exit(main())
