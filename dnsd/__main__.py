import sys

from dnsd.cli import main

sys.exit(main())
