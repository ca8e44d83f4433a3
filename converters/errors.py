"""The project-wide refusal type.

Every converter, reader and writer refuses bad input by raising :class:`ConversionError`; the
message names the offending field, tensor or file. The CLI turns it into exit code 2 with no
traceback.
"""
from __future__ import annotations


class ConversionError(ValueError):
    """A conversion (or a checkpoint read/write) that cannot be done faithfully.

    The message names what was wrong: a config field by its key/dotted path, a tensor by its name,
    a file by its path.
    """
