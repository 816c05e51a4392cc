import sys

from sftgate.cli import main

sys.exit(main())
