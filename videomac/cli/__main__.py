"""``python -m videomac.cli`` (what ``torchrun ... -m videomac.cli pretrain`` runs)."""

import sys

from videomac.cli import main

sys.exit(main())
