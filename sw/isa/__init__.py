"""The command ISA: table, encoder/decoder, disassembler and reference-page generator.

The table in :mod:`.table` is the single definition; everything here is derived from it.
"""

from .enums import *  # noqa: F401,F403
from .table import *  # noqa: F401,F403
from .codec import *  # noqa: F401,F403
