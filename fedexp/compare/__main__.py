"""`python -m fedexp.compare`: the same as `fedexp-compare`."""

from . import main

raise SystemExit(main())
