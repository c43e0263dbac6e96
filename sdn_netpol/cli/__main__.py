"""`python -m sdn_netpol.cli …` is `sdn-netpol …` (without the console script installed)."""

import sys

from sdn_netpol.cli import main

sys.exit(main())
