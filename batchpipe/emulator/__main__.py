"""`python -m batchpipe.emulator --port 8089`: run the emulator in the foreground."""

import sys

from .server import main

sys.exit(main())
