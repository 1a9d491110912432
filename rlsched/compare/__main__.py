import sys

from rlsched.compare.cli import main

sys.exit(main())
