"""``python -m taurus_gui``: open the lab's GUI."""

import sys

from taurus_gui.main_window import main

sys.exit(main())
