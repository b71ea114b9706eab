import sys

from bnwd.cli import main

sys.exit(main())
