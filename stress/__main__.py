import sys

from stress._cli import main

sys.exit(main())
