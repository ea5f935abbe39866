"""Sleipner AVP uncertainty quantification (Rizzuti et al., SEG 2020).

Usage::

    python examples/avp_sleipner.py                 # short schedule, outputs/avp_sleipner
    python examples/avp_sleipner.py --full          # original 32,768 VI iterations
    python examples/avp_sleipner.py --iterations 5000 --out my_run --resume

The same experiment is ``devito-uq avp`` (and ``make demo`` runs its short schedule);
this script only forwards its arguments to it.
"""

import sys

from devito_uq.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "outputs/avp_sleipner"]
    raise SystemExit(main(["avp", *argv]))
