import sys

from remixer.cli import main

sys.exit(main())
